"""Assemble the Trainer: arguments, collator, metrics (perplexity, bits per byte, throughput), callbacks, checkpoints."""
import contextlib
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, default_data_collator

from . import attention, optim, rundir
from .errors import UserError
from .generate import continue_prompt


class PretrainTrainer(Trainer):
    """A Trainer whose logs also carry perplexity, bits per byte and tokens per second."""

    def __init__(self, *args, bytes_per_token: float, tokens_per_step: int, flops_per_token: float = 0.0,
                 peak_flops: float | None = None, muon_learning_rate: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.muon_learning_rate = muon_learning_rate
        self.bytes_per_token, self.tokens_per_step = bytes_per_token, tokens_per_step
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops  # peak: all devices together
        self.clock = TrainingClock()
        self._last_log = None  # (training seconds, global_step) at the last training log
        self.nonfinite_losses = None  # a device tensor: non-finite micro-batch losses since the start
        self.budget = None  # a budget.TimeBudget (attach sets it); with max_train_minutes its schedule replaces lr_scheduler_type

    def get_train_dataloader(self):
        from .stream import StreamingBlocks

        if not isinstance(self.train_dataset, StreamingBlocks):
            return super().get_train_dataloader()
        # The stream is already sharded by rank: accelerate's prepare() would shard it a second time and drop half.
        # No workers: the position lives in this process, and the Rust tokenizer uses every core anyway.
        return torch.utils.data.DataLoader(self.train_dataset, batch_size=self._train_batch_size,
                                           collate_fn=self.data_collator, num_workers=0)

    def create_optimizer(self, model=None):  # Muon for the hidden matrices, when asked (optim.py)
        if self.muon_learning_rate is not None and self.optimizer is None:
            self.optimizer = optim.create_optimizer(self.model if model is None else model, self.args, self.muon_learning_rate)
        return super().create_optimizer(model)

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.clock.begun is None:
            self.clock.start()
            self._last_log = (0.0, self.state.global_step)  # a resumed run's rate is its own
        loss = super().training_step(model, inputs, num_items_in_batch)
        # Counted on the device and read only at logging and saving steps (Guard): reading it here would make the host
        # wait for the device every micro-step. The Trainer would quietly replace a NaN loss in its logs by the running mean.
        bad = (~torch.isfinite(loss.detach())).sum()
        self.nonfinite_losses = bad if self.nonfinite_losses is None else self.nonfinite_losses + bad
        return loss

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None and self.budget is not None and self.budget.minutes:  # see budget.py
            self.lr_scheduler = self.budget.make_scheduler(optimizer or self.optimizer, self.args.get_warmup_steps(num_training_steps))
            self._created_lr_scheduler = True  # as the Trainer marks its own: a second train() call makes a new one
        return super().create_scheduler(num_training_steps, optimizer)

    def _save_checkpoint(self, model, trial):
        try:
            with self.clock.paused("saving"):
                super()._save_checkpoint(model, trial)
        except Exception as e:  # see rundir.save_error: torch reports a full disk as a RuntimeError
            raise rundir.save_error(Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}", e) from None

    def evaluate(self, *args, **kwargs):
        with self.clock.paused("evaluation"):  # the sample callbacks run inside it too
            return super().evaluate(*args, **kwargs)

    def log(self, logs: dict, start_time: float | None = None) -> None:
        step = self.state.global_step
        if "eval_loss" in logs:
            loss = logs["eval_loss"]
            logs["eval_perplexity"] = math.exp(min(loss, 50))
            # Nats per token -> bits per UTF-8 byte of the evaluation text: comparable across tokenizers.
            logs["eval_bits_per_byte"] = loss / math.log(2) / self.bytes_per_token
        elif "loss" in logs:
            logs["tokens_seen"] = step * self.tokens_per_step
            seconds = self.clock.training_seconds()
            if self._last_log is not None and step > self._last_log[1] and seconds > self._last_log[0]:
                rate = (step - self._last_log[1]) * self.tokens_per_step / (seconds - self._last_log[0])
                logs["tokens_per_second"] = rate
                if self.peak_flops:
                    logs["mfu"] = self.flops_per_token * rate / self.peak_flops
            self._last_log = (seconds, step)
        super().log(logs, start_time)


class TrainingClock:
    """Seconds spent training: from the first training step on, less the time spent evaluating (sample generation
    included) and saving, which is counted apart. Throughput and the wall-clock budget use it, so neither an evaluation
    nor a slow disk makes training look slower or eats the budget."""

    def __init__(self):
        self.begun, self.spent = None, {"evaluation": 0.0, "saving": 0.0}
        self.before = dict.fromkeys(self.spent, 0.0)  # the same, before the first step (eval_on_start): reported, not subtracted

    def start(self) -> None:
        if self.begun is None:
            self.begun = time.perf_counter()

    def training_seconds(self) -> float:
        if self.begun is None:
            return 0.0
        return time.perf_counter() - self.begun - sum(self.spent.values())

    @contextlib.contextmanager
    def paused(self, what: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            # Before training starts (eval_on_start) nothing is running to pause: that time is only kept for the report.
            (self.spent if self.begun is not None else self.before)[what] += time.perf_counter() - start


class SampleCallback(TrainerCallback):
    """At each evaluation, continue a few fixed prompts and hand the texts to `sink` (SwanLab, the console)."""

    def __init__(self, tokenizer, prompts: list[str], max_new_tokens: int, sink, enabled: bool = True):
        self.tokenizer, self.prompts, self.max_new_tokens, self.sink, self.enabled = tokenizer, prompts, max_new_tokens, sink, enabled

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if self.enabled and state.is_world_process_zero and model is not None and self.prompts:
            self.sink(state.global_step, [generate(model, self.tokenizer, p, self.max_new_tokens) for p in self.prompts])


class GracefulStop(TrainerCallback):
    """Ctrl-C or SIGTERM while training: checkpoint at the end of the current step and stop, on every rank at the same
    step. Before or after training the first one interrupts at once (caches are written atomically). A second Ctrl-C
    always exits at once. SIGTERM never counts as a second one: torchrun forwards one after the terminal's SIGINT."""

    def __init__(self):
        self.requested, self.interrupts, self.stopped_at, self.training = False, 0, None, False

    def install(self) -> None:
        """(Re)take SIGINT and SIGTERM: called at start-up, and again before training, since swanlab.init sets its own."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:
                print("\nsecond Ctrl-C: exiting now, without saving", file=sys.stderr, flush=True)
                os._exit(130)
        if not self.training:
            self.interrupts = max(self.interrupts, 1)
            raise KeyboardInterrupt
        if not self.requested:
            print("\nstopping: saving a checkpoint at the end of this step (Ctrl-C again exits at once)", file=sys.stderr, flush=True)
        self.requested = True


class Guard(TrainerCallback):
    """At every logging and saving step, all ranks agree (one all-reduce) on: a stop request (Ctrl-C, SIGTERM), a
    non-finite loss since the last check, and, before a checkpoint is written, non-finite weights and too little disk.

    Agreeing matters: under FSDP or ZeRO a rank that raised alone would leave the others waiting forever inside the
    collective save. Checking only at those steps keeps the host from waiting on the device every step; the cost is that
    a stop or a NaN loss is acted on at the next logging step (at most logging_steps later; one process stops at once).
    No checkpoint is ever written with non-finite weights: those are checked before every save."""

    def __init__(self, stop: "GracefulStop", parameters: int):
        self.stop, self.parameters, self.trainer, self.checked = stop, parameters, None, 0

    def on_step_end(self, args, state, control, model=None, **kwargs):
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        due = control.should_log or control.should_save or control.should_evaluate or control.should_training_stop
        if not due and (distributed or not self.stop.requested):
            return
        losses = self.trainer.nonfinite_losses if self.trainer.nonfinite_losses is not None else 0
        stop, nan_loss = _agree([self.stop.requested, losses], args.device)
        first, self.checked = self.checked + 1, state.global_step
        if nan_loss:
            when = f"at step {state.global_step}" if first == state.global_step else f"between steps {first} and {state.global_step}"
            raise UserError(f"The training loss became NaN or infinite {when}. " + _last_good(args, state))
        if stop:
            control.should_save, control.should_training_stop = True, True
            self.stop.stopped_at = state.global_step
        if control.should_save:
            bad_weights, low_space = _agree([not _finite(model), state.is_world_process_zero and _low_space(args, self.parameters)],
                                            args.device)
            if bad_weights:
                raise UserError(f"The weights became NaN or infinite at step {state.global_step}, so no checkpoint was written. "
                                + _last_good(args, state))
            if low_space:
                raise UserError(f"Not enough disk space to write checkpoint-{state.global_step}: "
                                f"{rundir.space_problem(Path(args.output_dir), rundir.checkpoint_bytes(self.parameters), 'a checkpoint')}. "
                                f"Nothing was written; {_newest(args)}. Free some space (or lower --save_total_limit), "
                                "then run the same command to continue.")


def _agree(flags: list, device) -> list[bool]:
    """Each flag set on any rank (a logical OR across ranks): one all-reduce, one read back to the host."""
    t = torch.stack([torch.as_tensor(f, device=device).reshape(()).int() for f in flags])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def _finite(model) -> torch.Tensor:
    """Whether this rank's weights are finite: its own shard under FSDP (DTensor) and ZeRO-3 (ds_tensor), not placeholders."""
    if model is None:
        return torch.tensor(True)
    shards = [getattr(p, "ds_tensor", p) for p in model.parameters()]
    shards = [s.to_local() if hasattr(s, "to_local") else s for s in shards]
    return torch.stack([torch.isfinite(s).all() for s in shards if s.numel()]).all()


def _low_space(args, parameters: int) -> bool:
    return rundir.space_problem(Path(args.output_dir), rundir.checkpoint_bytes(parameters), "a checkpoint") is not None


def _newest(args) -> str:
    good = rundir.last_checkpoint(args.output_dir, move_aside=False)
    return f"the newest complete checkpoint is {good}" if good else "no checkpoint was written yet"


def _last_good(args, state) -> str:
    return (f"Nothing was saved after it; {_newest(args)}. Lower --learning_rate, raise --warmup_steps or keep "
            "--max_grad_norm, then run the same command to resume.")


class Manifest(TrainerCallback):
    """After the Trainer writes a checkpoint, record its files' sizes and digests, so a resume notices later damage."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            rundir.write_manifest(Path(args.output_dir) / f"checkpoint-{state.global_step}")


class StreamPosition(TrainerCallback):
    """Write each rank's stream position into a checkpoint before the Trainer writes the rest (and trainer_state.json last)."""

    def __init__(self, dataset, rank: int):
        self.dataset, self.rank = dataset, rank

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            from .stream import save_position

            consumed = state.global_step * args.per_device_train_batch_size * args.gradient_accumulation_steps
            save_position(self.dataset, Path(args.output_dir) / f"checkpoint-{state.global_step}", consumed, self.rank)


class RunShape(TrainerCallback):
    """Record the batch shape in each checkpoint, so a resume with another global batch is refused clearly."""

    NAME = "zhpretrain_shape.json"

    def __init__(self, shape: dict):
        self.shape = shape

    def on_step_end(self, args, state, control, **kwargs):
        # Before the Trainer writes the checkpoint (and trainer_state.json, our "complete" mark, last).
        if control.should_save and state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / self.NAME).write_text(json.dumps(self.shape))

    def check(self, checkpoint: str) -> None:
        path = Path(checkpoint) / self.NAME
        if not path.is_file():
            return
        old = json.loads(path.read_text())
        keys = ("world_size", "per_device_train_batch_size", "gradient_accumulation_steps", "block_size")
        if self.shape.get("streaming") and any(old[k] != self.shape[k] for k in keys):
            raise UserError(f"{checkpoint} was written by a streaming run with " + ", ".join(f"{k}={old[k]}" for k in keys) +
                            "; each rank's stream position depends on all of them. Resume with the same values, "
                            "or start a new --output_dir.")
        # The data order and the schedule continue exactly when the global batch (sequences and their length) is the same,
        # however it is split over processes, per-device batches and accumulation.
        if (old["sequences_per_step"], old["block_size"]) != (self.shape["sequences_per_step"], self.shape["block_size"]):
            describe = lambda s: (f"{s['world_size']} processes x {s['per_device_train_batch_size']} per device x "  # noqa: E731
                                  f"{s['gradient_accumulation_steps']} accumulation = {s['sequences_per_step']} sequences of {s['block_size']} tokens")
            raise UserError(f"{checkpoint} was written with {describe(old)} per step; this run has {describe(self.shape)}. "
                            "Resume with the same global batch (change --per_device_train_batch_size or "
                            "--gradient_accumulation_steps to match) and block_size, or start a new --output_dir.")


@torch.no_grad()
def generate(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Sample a continuation with a fixed seed, leaving the training RNG untouched (so resumed runs stay exact)."""
    was_training = model.training
    model.eval()
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        # The same continuation as `python -m zhpretrain.generate` (from after an EOS, as training documents start).
        text = continue_prompt(model, tokenizer, prompt, max_new_tokens, temperature=0.8, top_p=1.0, top_k=50,
                               repetition_penalty=1.1, seed=0)
    model.train(was_training)
    return text


def sharded(args) -> bool:
    """FSDP or DeepSpeed, from the arguments or from an accelerate config: weights are split, so no rank-0-only generate."""
    env = any(os.environ.get(v, "false").lower() == "true" for v in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"))
    return bool(args.fsdp or args.deepspeed or env)


def build_trainer(model, training_args, data: dict, tokenizer, callbacks: list, bytes_per_token: float, tokens_per_step: int,
                  flops_per_token: float = 0.0, peak_flops: float | None = None,
                  muon_learning_rate: float | None = None, document_attention: bool = False):
    return PretrainTrainer(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data["test"],
        processing_class=tokenizer,
        data_collator=attention.DocumentAttentionCollator(tokenizer.eos_token_id) if document_attention else default_data_collator,
        callbacks=callbacks,
        bytes_per_token=bytes_per_token,
        tokens_per_step=tokens_per_step,
        flops_per_token=flops_per_token,
        peak_flops=peak_flops,
        muon_learning_rate=muon_learning_rate,
    )


def tidy_final(folder: Path) -> None:
    """final/ holds what a user loads: drop the Trainer's pickled training_args.bin (loading it means unpickling, and
    the arguments are in the SwanLab config anyway), and give files the permissions of any file the user creates
    (safetensors writes its file 0600)."""
    (folder / "training_args.bin").unlink(missing_ok=True)
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)
