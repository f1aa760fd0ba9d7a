"""May this run continue from the newest checkpoint in its output_dir, and with what state: the one decision of a resume.

decide() runs before any tokenizing, so a resume that cannot work is refused in seconds, not after hours. It picks the
newest checkpoint that really loads (checkpoint.last_checkpoint) and checks, against what that checkpoint's run was:
- the identity (data, training settings, model shape; the tokenizer once it is known): zhpretrain_run.json in output_dir;
- the global batch and block size (the data order and the schedule continue only with the same ones);
- the time budget's settings (its schedule continues only with the same ones);
- the optimizer's kind (AdamW's state does not fit Muon's, nor the reverse).
It hands on what the checkpoint carries for this project: the budget's clock and schedule, each rank's stream position,
the tokenizer, and whether the run already finished."""
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from . import checkpoint

IDENTITY = "zhpretrain_run.json"
# Changes a resume can go on with when the user says so; the others make the checkpoint's weights meaningless.
CHANGES_ALLOWED = ("data", "training")
# The training-recipe options a resumed run must keep, with their defaults: set away from them they join the identity
# (defaults are left out, so the identity of a run that uses none is what it was before they existed). The tokenizer
# sample needs no entry: a resume keeps the checkpoint's own tokenizer, which is part of the identity.
RECIPE_DEFAULTS = {"muon_learning_rate": None, "embedding_learning_rate": None, "document_attention": False,
                   "zero_init_residual": False}
BUDGET_SETTINGS = ("max_train_minutes", "budget_decay_ratio", "budget_min_lr_ratio")
TRAINING_KEYS = ("learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "warmup_ratio", "weight_decay",
                 "adam_beta1", "adam_beta2", "adam_epsilon", "optim", "max_grad_norm", "max_steps", "seed")
MODEL_KEYS_SKIPPED = {"vocab_size", "eos_token_id", "bos_token_id", "pad_token_id", "transformers_version", "_name_or_path",
                      "dtype", "id2label", "label2id"}


@dataclass
class Resume:
    """The decision: where to continue from (None: from scratch) and what the checkpoint hands on."""

    checkpoint: str | None
    identity: dict  # this run's (the tokenizer joins it in record())
    source: dict | None = None  # the data's key (data/prepare.py source): names the caches
    done: int | None = None  # the checkpoint's step when it already finished: evaluate, save and sample, train nothing
    budget: dict | None = None  # the time budget's state saved in the checkpoint
    tokenizer: str | None = None  # the checkpoint's own tokenizer folder: its embeddings were trained for exactly that one

    def stream_position(self, rank: int) -> dict:
        state = checkpoint.read_side(self.checkpoint, checkpoint.STREAM.format(rank=rank))
        if state is None:
            raise UserError(f"{self.checkpoint} has no stream position for rank {rank} "
                            f"({checkpoint.STREAM.format(rank=rank)}): it was written by a run that was not streaming, or "
                            "with fewer processes. Resume it the way it was started, or use a new --output_dir.")
        return state

    def record(self, output_dir: Path, tok_digest: str) -> None:
        """Add the tokenizer to the identity (a resume must keep it) and record the identity in output_dir. Every rank
        must hold rank 0's tokenizer (a node that trained its own from other data would train other embeddings)."""
        mine = tok_digest
        tok_digest = from_rank0(lambda: mine)
        if mine != tok_digest:
            raise UserError(f"This process's tokenizer ({mine[:12]}) differs from rank 0's ({tok_digest[:12]}): the nodes "
                            "read different data or tokenizer files. Give every node the same --train_file contents and "
                            "--tokenizer_name_or_path (or one shared --cache_dir).")
        self.identity["tokenizer"] = tok_digest

        def check_and_write():
            if self.checkpoint:
                check_identity(output_dir, self.checkpoint, {"tokenizer": tok_digest}, allow=False)
            write_identity(output_dir, self.identity)
        from_rank0(check_and_write)


def identity(source: dict, training_args, config, data_args, run_args, model_args) -> dict:
    """What makes this run this run: a resume with other values would mix two runs (see check_identity)."""
    training = {k: getattr(training_args, k) for k in TRAINING_KEYS if hasattr(training_args, k)}
    if training_args.max_steps <= 0:
        training["num_train_epochs"] = training_args.num_train_epochs
    training.update(recipe_identity(data_args, run_args, model_args))
    model = {k: v for k, v in config.to_dict().items() if k not in MODEL_KEYS_SKIPPED}
    # As it reads back from zhpretrain_run.json (JSON has no integer keys or tuples), so equal settings compare equal.
    return json.loads(json.dumps({"data": source, "training": training, "model": model}, default=str))


def recipe_identity(data_args, run_args, model_args) -> dict:
    """The recipe options set away from their defaults (RECIPE_DEFAULTS), for the "training" part of the identity."""
    values = {"muon_learning_rate": run_args.muon_learning_rate, "embedding_learning_rate": run_args.embedding_learning_rate,
              "document_attention": data_args.document_attention,
              "zero_init_residual": model_args.zero_init_residual}
    return {k: v for k, v in values.items() if v != RECIPE_DEFAULTS[k]}


def decide(output_dir: Path, data_args, run_args, training_args, config, shape: dict, model_args) -> Resume:
    """The newest checkpoint that really loads, checked against the run that wrote it (see the module's text).

    Decided once, by rank 0, and handed to every rank: on the shared filesystem a multi-node run needs, another rank could
    list the folder differently (attribute caching, a scan racing rank 0's move of a damaged checkpoint) and resume at
    another step. Rank 0 also computes the data's key (it reads every file's digest once, not once per rank)."""
    return from_rank0(lambda: _decide(output_dir, data_args, run_args, training_args, config, shape, model_args))


def _decide(output_dir: Path, data_args, run_args, training_args, config, shape: dict, model_args) -> Resume:
    from ..data import prepare  # the data's key: what the data is (files and their digests) and how it is split

    found = chosen(output_dir, training_args.resume_from_checkpoint) or checkpoint.last_checkpoint(output_dir, move_aside=True)
    source = prepare.source(data_args)
    run_identity = identity(source, training_args, config, data_args, run_args, model_args)
    if not found:
        return Resume(None, run_identity, source)
    old = read_identity(output_dir) or {}
    check_identity(output_dir, found, run_identity, run_args.allow_resume_changes)
    check_optimizer(found, old.get("training", {}), run_identity["training"])
    check_shape(found, shape)
    budget = check_budget(found, run_args)
    done = finished_step(found, training_args.max_steps, budget)
    tokenizer = found if (Path(found) / "tokenizer.json").is_file() else None
    return Resume(found, run_identity, source, done=done, budget=budget, tokenizer=tokenizer)


def chosen(output_dir: Path, asked: str | None) -> str | None:
    """The checkpoint --resume_from_checkpoint names, when it names one of this run's: a user pointing at a checkpoint
    means it (None: not given, or "true"/"last", the newest that loads)."""
    if not asked or asked.lower() in ("true", "last", "latest"):
        return None
    path = Path(asked).expanduser().resolve()
    if path.parent != Path(output_dir).expanduser().resolve() or not checkpoint.CHECKPOINT.match(path.name):
        raise UserError(f"--resume_from_checkpoint {asked} is not a checkpoint-N folder of this run's --output_dir "
                        f"{output_dir}: a run resumes only its own checkpoints (its identity, budget and data position live "
                        "there). To start from another run's weights use --init_from FOLDER (a final/ or checkpoint-N "
                        "folder) with a new --output_dir; to resume that run, give its --output_dir.")
    problem = checkpoint.checkpoint_problem(path) if path.is_dir() else "it does not exist"
    if problem:
        raise UserError(f"--resume_from_checkpoint {asked} cannot be resumed: {problem}. Name another checkpoint-N of "
                        f"{output_dir}, or leave the option out to resume the newest one that loads.")
    return str(path)


def from_rank0(compute):
    """compute() on rank 0, its result (or its error) on every rank: the one way a launch agrees on a decision."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return compute()
    payload = [None]
    if dist.get_rank() == 0:
        try:
            payload = [("ok", compute())]
        except UserError as e:
            payload = [("error", str(e))]
        except BaseException as e:  # any other failure: the other ranks must not wait for an answer that never comes
            dist.broadcast_object_list([("crash", f"rank 0 failed: {type(e).__name__}: {e}")], src=0)
            raise
    dist.broadcast_object_list(payload, src=0)
    kind, value = payload[0]
    if kind == "ok":
        return value
    if kind == "error":
        raise UserError(value)
    raise RuntimeError(value)


def finished_step(found: str, max_steps: int, budget: dict | None) -> int | None:
    """The step of a checkpoint already at this run's last step (the Trainer would train one step more on resume): at
    max_steps (or the epochs' total), or at the end of its budget's decay."""
    state = json.loads((Path(found) / "trainer_state.json").read_text())
    last = max_steps if max_steps > 0 else state.get("max_steps", 0)  # epoch-based runs: the total the Trainer computed then
    if 0 < last <= state["global_step"]:
        return state["global_step"]
    if budget and budget.get("decay_start") is not None and budget["step"] >= budget["decay_start"] + budget["decay_steps"]:
        return budget["step"]
    return None


def check_optimizer(found: str, old: dict, new: dict) -> None:
    """AdamW's saved state does not fit Muon + AdamW, nor the reverse, nor another --optim's: even --allow_resume_changes
    cannot switch (its other training settings do take effect from the resumed step on: trainer.py)."""
    if old.get("optim") and new.get("optim") and old["optim"] != new["optim"]:
        raise UserError(f"{found} was trained with --optim {old['optim']} and this run uses {new['optim']}: the checkpoint's "
                        "optimizer state does not fit another optimizer. Resume with --optim "
                        f"{old['optim']}, or start a new --output_dir.")
    if (old.get("muon_learning_rate") is None) != (new.get("muon_learning_rate") is None):
        was, now = ("AdamW", "Muon + AdamW") if new.get("muon_learning_rate") is not None else ("Muon + AdamW", "AdamW")
        raise UserError(f"{found} was trained with {was} and this run uses {now} (--muon_learning_rate): the checkpoint's "
                        "optimizer state does not fit. Resume with the optimizer settings of the run that wrote it, or "
                        "start a new --output_dir.")


def check_shape(found: str, shape: dict) -> None:
    """The data order and the schedule continue exactly when the global batch (sequences and their length) is the same,
    however it is split over processes, per-device batches and accumulation; a stream's positions need all of it."""
    old = checkpoint.read_side(found, checkpoint.SHAPE)
    if old is None:
        return
    keys = ("world_size", "per_device_train_batch_size", "gradient_accumulation_steps", "block_size")
    if shape.get("streaming") and any(old[k] != shape[k] for k in keys):
        raise UserError(f"{found} was written by a streaming run with " + ", ".join(f"{k}={old[k]}" for k in keys) +
                        "; each rank's stream position depends on all of them. Resume with the same values, "
                        "or start a new --output_dir.")
    if (old["sequences_per_step"], old["block_size"]) != (shape["sequences_per_step"], shape["block_size"]):
        describe = lambda s: (f"{s['world_size']} processes x {s['per_device_train_batch_size']} per device x "  # noqa: E731
                              f"{s['gradient_accumulation_steps']} accumulation = {s['sequences_per_step']} sequences of {s['block_size']} tokens")
        raise UserError(f"{found} was written with {describe(old)} per step; this run has {describe(shape)}. "
                        "Resume with the same global batch (change --per_device_train_batch_size or "
                        "--gradient_accumulation_steps to match) and block_size, or start a new --output_dir.")


def check_budget(found: str, run_args) -> dict | None:
    """The budget state the checkpoint carries, when its settings are this run's (or --allow_resume_changes lets a
    change through: a decay that already started is kept)."""
    saved = checkpoint.read_side(found, checkpoint.BUDGET)
    settings = {k: getattr(run_args, k) for k in BUDGET_SETTINGS}
    old = saved["settings"] if saved else (None if not run_args.max_train_minutes else dict.fromkeys(BUDGET_SETTINGS))
    if old is None or old == settings:
        return saved
    describe = lambda s: ", ".join(f"{k}={s.get(k)}" for k in BUDGET_SETTINGS)  # noqa: E731
    if not run_args.allow_resume_changes:
        raise UserError(f"{found} was trained with {describe(old)}; this run has {describe(settings)}. Run with "
                        "the same values to continue its budget and learning-rate schedule, pass --allow_resume_changes "
                        "true to change them (a decay that already started is kept), or start a new --output_dir.")
    print(f"budget: {found} was trained with {describe(old)}; continuing with {describe(settings)} "
          "(--allow_resume_changes)", flush=True)
    return saved


def read_identity(output_dir: Path) -> dict | None:
    try:
        return json.loads((output_dir / IDENTITY).read_text())
    except (OSError, ValueError):
        return None


def write_identity(output_dir: Path, identity: dict) -> None:
    checkpoint.write_json(output_dir / IDENTITY, identity)


def _data_view(source: dict) -> dict:
    """The data as content: file paths and modification times left out, so a moved or touched file is the same data."""
    def files(entries):
        return sorted((e["size"], e["sample"]) for e in entries or [])
    return {**source, "files": files(source.get("files")), "validation": files(source.get("validation"))}


def changes(old: dict, new: dict) -> dict[str, list[str]]:
    """What differs between two identities, by part (data, training, model, tokenizer), in words."""
    found = {}
    for part in new:
        if part not in old or old[part] == new[part]:
            continue
        if part == "data":
            a, b = _data_view(old[part]), _data_view(new[part])
            lines = [_describe_files(k, old[part].get(k), new[part].get(k)) for k in ("files", "validation") if a[k] != b[k]]
            lines += [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted((set(a) | set(b)) - {"files", "validation"}) if a.get(k) != b.get(k)]
        elif isinstance(new[part], dict):
            lines = [f"{k}: {old[part].get(k)!r} -> {new[part].get(k)!r}" for k in sorted(set(old[part]) | set(new[part]))
                     if old[part].get(k) != new[part].get(k)]
        else:
            lines = [f"{old[part]} -> {new[part]}"]
        if lines:
            found[part] = lines
    return found


def _describe_files(kind: str, old: list | None, new: list | None) -> str:
    old, new = old or [], new or []
    if len(old) == len(new) == 1:
        return f"{kind}: {new[0]['path']} was {old[0]['size']:,} bytes, is now {new[0]['size']:,} bytes" + \
            (" with other contents" if old[0]["size"] == new[0]["size"] else "")
    return f"{kind}: {len(old)} files ({sum(e['size'] for e in old):,} bytes) -> {len(new)} files ({sum(e['size'] for e in new):,} bytes)"


def check_identity(output_dir: Path, checkpoint: str, current: dict, allow: bool) -> bool:
    """Refuse to resume checkpoint when the run's identity changed; return True when it changed and `allow` lets it go on."""
    old = read_identity(output_dir)
    found = changes(old, current) if old else {}
    if not found:
        return False
    listed = "; ".join(f"{part}: " + ", ".join(lines) for part, lines in found.items())
    fixed = [part for part in found if part not in CHANGES_ALLOWED]
    if fixed:
        raise UserError(f"{output_dir} holds {Path(checkpoint).name} of another run: {listed}. Its weights only fit the "
                        f"{' and '.join(fixed)} they were trained with, so it cannot be resumed this way. Start a new --output_dir, "
                        "or run with the settings it was started with (see its zhpretrain_run.json).")
    if not allow:
        raise UserError(f"{output_dir} holds {Path(checkpoint).name} of a run started with other settings: {listed}. "
                        "Resuming would silently mix two runs. Start a new --output_dir, or pass --allow_resume_changes true to "
                        "continue this run with the new settings (it keeps the checkpoint's own tokenizer and model).")
    print(f"continuing {Path(checkpoint).name} with changed settings (--allow_resume_changes): {listed}", flush=True)
    return True
