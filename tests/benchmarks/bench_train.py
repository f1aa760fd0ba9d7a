"""Benchmark training: tokens/s and MFU of the project's training path (the Trainer built as pretrain.py builds it)
against a plain PyTorch loop with the same model, batches and optimizer, at the demo and small shapes.

    python tests/benchmarks/bench_train.py [--shapes demo,small] [--steps 30] [--repeats 4] [--profile] [--out FILE]

Both sides start from the same weights (the project's build_model with the same seed), read the same token blocks of
data/demo-zhwiki.jsonl (the project's prepare_data, cached in --cache_dir) in the same order (the Trainer's seeded
sampler: seed + epoch), and step the same optimizer (torch AdamW with the Trainer's parameter groups, lr, betas, eps,
weight decay and fused flag, the same lr schedule, gradient clipping at max_grad_norm). The plain side has no Trainer,
no accelerate and no callbacks: a DataLoader, forward, backward, clip, step, schedule, zero_grad. The table says
whether the weights, the batches and the optimizer really were the same, and how far the two losses drifted apart.

Timing: the two sides alternate step by step in one process (ABAB...): at the end of each Trainer step a callback runs
one plain step. A project step is timed from the end of the previous plain step to the Trainer's next on_step_end (so
everything the Trainer does between two steps counts: logging, callbacks, data loading); a plain step from start to
end. The first --warmup steps are not timed. On a machine shared with other work only ratios measured side by side
mean something. Each repeat is a fresh pair of runs, and each step counts with its fastest time over the repeats on
each side: step k does the same work in every run (the same batch; logging at the same steps), so the project's own
periodic costs stay in, while a burst of other work stays in only if it hit that step in every run. The table also
gives each run's own ratio over all its steps, to show the noise.

--profile adds, per shape, one instrumented run: the time per step inside forward, backward, clipping and the
optimizer step against the rest, on both sides; and a cProfile of the project's training loop with those four switched
off, so that it shows only the Trainer's own work (callbacks, logging, data loading, bookkeeping).
"""
import argparse
import contextlib
import cProfile
import datetime
import functools
import gc
import json
import os
import platform
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("SWANLAB_MODE", "disabled")

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from zhpretrain import config  # noqa: E402
from zhpretrain.data import blocks, prepare  # noqa: E402
from zhpretrain.model import build as modeling  # noqa: E402
from zhpretrain.report import tracking  # noqa: E402
from zhpretrain.run import folder  # noqa: E402
from zhpretrain.run.resume import Resume  # noqa: E402
from zhpretrain.train import speed  # noqa: E402
from zhpretrain.train import trainer as training  # noqa: E402
from zhpretrain.train.callbacks import GracefulStop  # noqa: E402

# The demo preset as shipped. The small preset's model at its block_size, on the demo corpus (the full dump it names is
# not shipped): the model keeps its 16k vocabulary (a BPE trained on 200 kB stops short of 16k tokens). On a CPU one
# optimizer step is one micro-batch of --small_batch sequences instead of 32 x 4 (minutes per step).
SHAPES = {
    "demo": {"preset": "configs/demo.yaml", "args": [], "note": "configs/demo.yaml as is"},
    "small": {"preset": "configs/small.yaml",
              "args": ["--train_file", "data/demo-zhwiki.jsonl", "--validation_split_percentage", "10",
                       "--config_overrides", "vocab_size=16000"],
              "note": "configs/small.yaml's model and block_size on data/demo-zhwiki.jsonl, vocab_size kept at 16000"},
    "tutorial": {"preset": "configs/tutorial.yaml",
                 "args": ["--train_file", "data/demo-zhwiki.jsonl", "--validation_split_percentage", "10",
                          "--config_overrides", "vocab_size=16000"],
                 "note": "configs/tutorial.yaml's model and block_size on data/demo-zhwiki.jsonl, vocab_size 16000"},
    "tiny": {"preset": "configs/demo.yaml", "args": ["--block_size", "32", "--per_device_train_batch_size", "4"],
             "note": "configs/demo.yaml with 32-token blocks and 4 sequences per step: the reduced mode of the tests"},
}


def environment() -> dict:
    import accelerate
    import datasets
    import transformers

    def git(*args):
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain") else "")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return {"commit": commit, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "datasets": datasets.__version__}


@contextlib.contextmanager
def quiet(enabled: bool):
    """The project's console lines and progress bar go to /dev/null (they are still written: their cost is timed)."""
    if not enabled:
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        yield


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Shape:
    """One shape: its arguments, its data (prepared once by the project, cached) and its model config."""

    def __init__(self, name: str, a, workdir: Path, extra: tuple = (), attn_implementation: str | None = None):
        self.name, self.a, self.workdir, self.runs = name, a, workdir, 0
        self.attn_implementation = attn_implementation  # None: the model config's own
        spec = SHAPES[name]
        self.preset, self.extra, self.note = str(REPO / spec["preset"]), list(spec["args"]) + list(extra), spec["note"]
        if name in ("small", "tutorial") and not torch.cuda.is_available() and a.small_batch:
            self.extra += ["--per_device_train_batch_size", str(a.small_batch), "--gradient_accumulation_steps", "1"]
            self.note += f"; on this CPU a step is {a.small_batch} sequence(s), not the preset's 32 x 4 accumulation"
        self.steps = a.small_steps if name == "small" else a.steps
        _, self.data_args, self.model_args, _, self.args = self.parse()
        key = prepare.source(self.data_args)
        self.tok, self.datasets, _ = prepare.prepare(self.data_args, self.model_args, key, Resume(None, {}), builder=True)
        self.block_size = self.data_args.block_size
        self.bytes_per_token = blocks.label_bytes_per_token(self.datasets["test"], self.tok)
        self.config = modeling.build_config(self.model_args, self.tok, self.block_size)
        model = self.new_model(0)
        self.parameters = modeling.count_parameters(model)["parameters"]
        self.flops_per_token = speed.flops_per_token(model, self.block_size)

    def parse(self, output_dir: str | None = None, max_steps: int = 1):
        argv = [self.preset, *self.extra, "--output_dir", output_dir or str(self.workdir / "parse"),
                "--max_steps", str(max_steps), "--eval_strategy", "no", "--eval_on_start", "false",
                "--save_strategy", "no", "--report_to", "none", "--swanlab_mode", "disabled",
                "--cache_dir", self.a.cache_dir]
        if self.a.logging_steps:
            argv += ["--logging_steps", str(self.a.logging_steps)]
        with quiet(not self.a.verbose):  # "bf16 is not supported on this device" at every parse
            return config.parse_args(argv)

    def new_model(self, seed: int):
        return self.kernel(modeling.build_model(self.config, seed))

    def kernel(self, model):
        if self.attn_implementation:
            model.set_attn_implementation(self.attn_implementation)
        return model


class Phases:
    """Wall time spent inside forward, backward, clipping and the optimizer step, per timed step (new_step() starts
    one); with a profiler, the profiler is switched off inside them, so that it sees everything else."""

    NAMES = ("forward", "backward", "clip", "optimizer")

    def __init__(self, device, profiler: cProfile.Profile | None = None):
        self.device, self.profiler, self.active = device, profiler, False
        self.steps = []

    def new_step(self):
        self.steps.append(dict.fromkeys(self.NAMES, 0.0))

    def wrap(self, name: str, fn):
        @functools.wraps(fn)  # the Trainer reads model.forward's signature to choose the batch's columns
        def timed(*args, **kwargs):
            if not self.active:
                return fn(*args, **kwargs)
            if self.profiler:
                self.profiler.disable()
            sync(self.device)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync(self.device)
                self.steps[-1][name] += time.perf_counter() - start
                if self.profiler:
                    self.profiler.enable()
        return timed

    def start(self):
        if self.active:
            return
        self.active = True
        if self.profiler:
            self.profiler.enable()

    def stop(self):
        if self.profiler:
            self.profiler.disable()
        self.active = False


def decay_parameter_names(model) -> set[str]:
    """The Trainer's rule (Trainer.get_decay_parameter_names): no weight decay for biases, norms and LayerNorm modules."""
    patterns = [re.compile(p) for p in (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")]
    in_layernorm = {id(p) for m in model.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()}
    return {n for n, p in model.named_parameters()
            if id(p) not in in_layernorm and not any(pat.search(n.lower()) for pat in patterns)}


def plain_optimizer(model, args):
    """torch AdamW as the Trainer creates it for optim adamw_torch or adamw_torch_fused (its default on torch >= 2.8)."""
    if args.fp16:
        raise SystemExit("the plain loop has no fp16 loss scaling; benchmark fp32 or bf16")
    if args.optim not in ("adamw_torch", "adamw_torch_fused"):
        raise SystemExit(f"the plain loop builds torch AdamW; this preset's optim is {args.optim}")
    decay = decay_parameter_names(model)
    groups = [{"params": [p for n, p in model.named_parameters() if n in decay and p.requires_grad],
               "weight_decay": args.weight_decay},
              {"params": [p for n, p in model.named_parameters() if n not in decay and p.requires_grad],
               "weight_decay": 0.0}]
    kwargs = {"fused": True} if args.optim == "adamw_torch_fused" else {}
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                             eps=args.adam_epsilon, **kwargs)


class EpochSampler(torch.utils.data.Sampler):
    """A random permutation per epoch from a generator seeded with seed + epoch: the order of accelerate's
    SeedableRandomSampler, which the Trainer's RandomSampler becomes (use_seedable_sampler defaults to True)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        self.epoch += 1
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self):
        return self.n


class PlainLoop:
    """forward, backward, clip, step, schedule, zero_grad: no Trainer, accelerate or callbacks. Built up front (building
    the model reseeds the global RNG), then stepped one optimizer step at a time."""

    def __init__(self, shape: Shape, total: int, timed: range, phases: Phases | None = None):
        from transformers import get_scheduler

        from zhpretrain.model import attention, optim

        _, data_args, _, run_args, args = shape.parse(str(shape.workdir / "plain"), total)
        self.args = args
        self.device, self.timed, self.phases = args.device, timed, phases
        self.model = shape.new_model(args.seed).to(self.device)
        self.model.train()
        # The preset's recipe on both sides: Muon + AdamW (and the embedding's own rate) where the dial sets them, and the
        # collator of its attention kernel (document attention's masks and positions).
        self.optimizer = (optim.create_optimizer(self.model, args, run_args.muon_learning_rate, run_args.embedding_learning_rate)
                          if run_args.muon_learning_rate else plain_optimizer(self.model, args))
        collate = attention.collator(shape.tok.eos_token_id, data_args.document_attention,
                                     self.model.config._attn_implementation)
        self.scheduler = get_scheduler(args.lr_scheduler_type, self.optimizer, num_warmup_steps=args.get_warmup_steps(total),
                                       num_training_steps=total, scheduler_specific_kwargs=args.lr_scheduler_kwargs)
        dataset = shape.datasets["train"]
        seed = args.data_seed if args.data_seed is not None else args.seed
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=args.per_device_train_batch_size,
                                                  sampler=EpochSampler(len(dataset), seed), collate_fn=collate)
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if args.bf16 else contextlib.nullcontext
        # Compiled as the Trainer compiles it with --torch_compile (accelerate: torch.compile of the model).
        self.forward = torch.compile(self.model, backend=args.torch_compile_backend or "inductor",
                                     mode=args.torch_compile_mode) if args.torch_compile else self.model
        self.backward = lambda loss: loss.backward()
        self.clip, self.step_optimizer = torch.nn.utils.clip_grad_norm_, self.optimizer.step
        if phases:
            self.forward, self.backward = phases.wrap("forward", self.forward), phases.wrap("backward", self.backward)
            self.clip, self.step_optimizer = phases.wrap("clip", self.clip), phases.wrap("optimizer", self.step_optimizer)
        self.chunks = self._chunks()
        self.losses, self.batches, self.step_tokens, self.done = [], [], [], 0

    def _chunks(self):
        """The micro-batches of each optimizer step, epoch after epoch (an epoch's last step may have fewer)."""
        accumulation = self.args.gradient_accumulation_steps
        while True:
            chunk = []
            for batch in self.loader:
                chunk.append(batch)
                if len(chunk) == accumulation:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk

    def step(self) -> None:
        self.done += 1
        if self.phases and self.done in self.timed:
            self.phases.new_step()
            self.phases.active = True
        chunk = next(self.chunks)
        self.step_tokens.append(sum(b["input_ids"].numel() for b in chunk))
        for batch in chunk:
            batch = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            input_ids = batch["input_ids"]
            self.batches.append(input_ids)
            with self.autocast():
                loss = self.forward(**batch).loss
            self.losses.append(loss.detach())
            self.backward(loss if len(chunk) == 1 else loss / len(chunk))
        if self.args.max_grad_norm > 0:
            self.clip(self.model.parameters(), self.args.max_grad_norm)
        self.step_optimizer()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.phases:
            self.phases.active = False


class Interleave(TrainerCallback):
    """At the end of each Trainer step, run one plain step: the two sides alternate step by step (ABAB...), so a burst
    of other work on the machine lands on both. Project step k took end[k] - resume[k-1] (all the Trainer does between
    two steps included), plain step k took resume[k] - end[k]. The device is synchronised at those points only."""

    def __init__(self, device, plain: PlainLoop | None, timed: range, phases: Phases | None = None):
        self.device, self.plain, self.timed, self.phases = device, plain, timed, phases
        self.end, self.resume = {}, {}
        self.peak_bytes = {"project": None, "plain": None}  # CUDA only: the most allocated during each side's steps

    def _peak(self, side: str) -> None:
        if self.device.type == "cuda":
            self.peak_bytes[side] = max(self.peak_bytes[side] or 0, torch.cuda.max_memory_allocated(self.device))
            torch.cuda.reset_peak_memory_stats(self.device)

    def on_step_end(self, args, state, control, **kwargs):
        k = state.global_step
        sync(self.device)
        self.end[k] = time.perf_counter()
        self._peak("project")
        if self.phases and self.timed.start - 1 <= k < self.timed.stop - 1:  # project step k + 1 is timed
            self.phases.new_step()
            self.phases.start()
        if self.phases and k == self.timed.stop - 1:
            self.phases.stop()
        if self.plain is not None:
            self.plain.step()
            sync(self.device)
            self._peak("plain")
        self.resume[k] = time.perf_counter()

    def project_steps(self) -> list[float]:
        return [self.end[k] - self.resume[k - 1] for k in self.timed]

    def plain_steps(self) -> list[float]:
        return [self.resume[k] - self.end[k] for k in self.timed]


def run_pair(shape: Shape, warmup: int, steps: int, plain: bool = True, project_phases: Phases | None = None,
             plain_phases: Phases | None = None, hooks: tuple = ()) -> dict:
    """The Trainer exactly as pretrain.py builds it (train.trainer.build: callbacks, console; no SwanLab, evaluation or
    checkpoints), with the plain loop stepped in between its steps. hooks: functions called with the built Trainer."""
    shape.runs += 1
    total, timed = warmup + steps, range(warmup + 1, warmup + steps + 1)
    _, data_args, model_args, run_args, training_args = shape.parse(str(shape.workdir / f"run-{shape.runs}"), total)
    output_dir, lock = folder.setup(training_args, data_args, run_args)
    try:
        tok, datasets, resume = shape.tok, shape.datasets, Resume(None, {})
        model, params = modeling.build(model_args, training_args, tok, data_args.block_size, resume)
        shape.kernel(model)
        loop = PlainLoop(shape, total, timed, plain_phases) if plain else None
        batch = training.global_batch(training_args, data_args.block_size, data_args.streaming)
        run = tracking.start(run_args, training_args, main_process=True, config={})
        stop = GracefulStop()
        trainer = training.build(model, tok, datasets, batch, resume, stop, run, params, (data_args, run_args, training_args))
        interleave = Interleave(training_args.device, loop, timed, project_phases)
        trainer.add_callback(interleave)
        for hook in hooks:
            hook(trainer)

        # Instrumentation: keep a reference to each micro-batch's loss and input_ids (no copy, no device work).
        losses, batches = [], []
        training_step = trainer.training_step

        def recording_step(model, inputs, num_items_in_batch=None):
            batches.append(inputs["input_ids"])
            loss = training_step(model, inputs, num_items_in_batch)
            losses.append(loss)
            return loss
        trainer.training_step = recording_step
        if project_phases:
            model.forward = project_phases.wrap("forward", model.forward)
            trainer.accelerator.backward = project_phases.wrap("backward", trainer.accelerator.backward)
            trainer.accelerator.clip_grad_norm_ = project_phases.wrap("clip", trainer.accelerator.clip_grad_norm_)

            class WrapOptimizer(TrainerCallback):  # the Trainer creates its optimizer inside train()
                def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
                    optimizer.step = project_phases.wrap("optimizer", optimizer.step)
            trainer.add_callback(WrapOptimizer())

        stop.training = True
        trainer.train()
        stop.training = False
        run.finish()
    finally:
        lock.release()
    result = {"project_seconds": sum(interleave.project_steps()), "project_step_seconds": interleave.project_steps(), "project_losses": [float(v) for v in losses],
              "project_batches": batches, "project_model": trainer.model, "project_optimizer": trainer.optimizer,
              "training_args": training_args, "project_peak_bytes": interleave.peak_bytes["project"]}
    if loop:
        result.update(plain_seconds=sum(interleave.plain_steps()), plain_step_seconds=interleave.plain_steps(), plain_losses=[float(v) for v in loop.losses],
                      plain_batches=loop.batches, plain_model=loop.model, plain_optimizer=loop.optimizer,
                      plain_peak_bytes=interleave.peak_bytes["plain"],
                      step_tokens=loop.step_tokens[warmup:total])  # an epoch's last batch may be short
    return result


def check_same(shape: Shape, r: dict) -> dict:
    """Same initial weights, same batches in the same order, same optimizer: what the comparison rests on."""
    a, b = shape.new_model(r["training_args"].seed), shape.new_model(r["training_args"].seed)
    same_init = all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    same_batches = len(r["project_batches"]) == len(r["plain_batches"]) and all(
        torch.equal(x.cpu(), y.cpu()) for x, y in zip(r["project_batches"], r["plain_batches"]))

    def describe(opt, model):
        opt = getattr(opt, "optimizer", opt)  # accelerate's AcceleratedOptimizer wraps the torch one
        names = {id(p): n for n, p in model.named_parameters()}
        return [(type(opt).__name__, sorted(names[id(p)] for p in g["params"]),
                 {k: g.get(k) for k in ("lr", "betas", "eps", "weight_decay", "fused", "foreach", "amsgrad", "maximize")})
                for g in opt.param_groups]
    same_optimizer = describe(r["project_optimizer"], r["project_model"]) == describe(r["plain_optimizer"], r["plain_model"])
    return {"same_initial_weights": same_init, "same_batches": same_batches, "same_optimizer": same_optimizer}


class Peak:
    """The device's peak from speed.peak_flops. On a CPU it is a measured matmul rate, which other work on the machine
    drags down: it is measured before every repeat and the best reading is kept."""

    def __init__(self, device, precision: str):
        self.device, self.precision, self.readings, self.source = device, precision, [], None

    def measure(self) -> None:
        value, self.source = speed.peak_flops(self.device, self.precision)
        if value:
            self.readings.append(value)

    @property
    def value(self) -> float | None:
        return max(self.readings) if self.readings else None


def undisturbed(project: list[float], plain: list[float], factor: float) -> list[int]:
    """The steps whose pair (one step each side, back to back) took at most factor x the lower quartile of the pairs:
    a pair far slower than that was disturbed by other work on the machine. A logging step's extra work stays far
    below that on a CPU."""
    pair_seconds = [x + y for x, y in zip(project, plain)]
    limit = factor * statistics.quantiles(pair_seconds, n=4)[0] if factor and len(pair_seconds) > 1 else float("inf")
    return [i for i, t in enumerate(pair_seconds) if t <= limit]


def bench_shape(shape: Shape, a, peak: Peak) -> dict:
    """Repeat the interleaved pair; then take each step's fastest time over the repeats, on each side. Step k does the
    same work in every repeat (the same batch; a logging step is a logging step), so the project's own periodic costs
    are kept, while a burst of other work is kept only if it hit that step in every repeat: on a shared 2-core CPU,
    bursts of 10-30x a normal step hit whole stretches of a run, on one side or both."""
    runs, accumulation = [], shape.args.gradient_accumulation_steps
    for rep in range(a.repeats):
        peak.measure()
        gc.collect()
        print(f"  {shape.name}: repeat {rep + 1}/{a.repeats} ({a.warmup} + {shape.steps} steps) ...", file=sys.stderr, flush=True)
        with quiet(not a.verbose):
            r = run_pair(shape, a.warmup, shape.steps)
        timed = slice(a.warmup * accumulation, (a.warmup + shape.steps) * accumulation)
        diffs = [abs(x - y) for x, y in zip(r["project_losses"][timed], r["plain_losses"][timed])]
        run = {"ratio": sum(r["plain_step_seconds"]) / sum(r["project_step_seconds"]),
               "project_final_loss": r["project_losses"][-1], "plain_final_loss": r["plain_losses"][-1],
               "max_abs_loss_diff": max(diffs) if diffs else None, "step_tokens": r["step_tokens"],
               **{k: r[k] for k in ("project_step_seconds", "plain_step_seconds", "project_losses", "plain_losses")}}
        if rep == 0:
            run.update(check_same(shape, r))
        runs.append(run)
        print(f"    this run's ratio over all its steps {run['ratio']:.3f}", file=sys.stderr, flush=True)
        del r
    peak.measure()
    tokens = runs[0]["step_tokens"]
    assert all(run["step_tokens"] == tokens for run in runs)
    project = [min(steps) for steps in zip(*(run["project_step_seconds"] for run in runs))]
    plain = [min(steps) for steps in zip(*(run["plain_step_seconds"] for run in runs))]
    args = shape.args
    row = {"shape": shape.name, "note": shape.note, "parameters": shape.parameters, "flops_per_token": shape.flops_per_token,
           "block_size": shape.block_size, "batch": args.per_device_train_batch_size,
           "gradient_accumulation_steps": accumulation, "steps": shape.steps, "warmup": a.warmup, "repeats": a.repeats,
           "logging_steps": args.logging_steps, "dataloader_num_workers": args.dataloader_num_workers,
           "optim": getattr(args.optim, "value", args.optim),
           "lr_scheduler_type": getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type),
           "train_blocks": len(shape.datasets["train"]),
           "project_tokens_per_second": sum(tokens) / sum(project), "plain_tokens_per_second": sum(tokens) / sum(plain),
           "ratio": sum(plain) / sum(project), "run_ratios": [run["ratio"] for run in runs],
           "project_step_seconds": project, "plain_step_seconds": plain,
           "max_abs_loss_diff": max(run["max_abs_loss_diff"] for run in runs),
           "project_final_loss": runs[-1]["project_final_loss"], "plain_final_loss": runs[-1]["plain_final_loss"],
           **{k: runs[0][k] for k in ("same_initial_weights", "same_batches", "same_optimizer")},
           "peak_flops": peak.value, "peak_readings": peak.readings, "peak_source": peak.source, "precision": peak.precision,
           "runs": runs}
    row["mfu_project"] = speed.mfu(shape.flops_per_token, row["project_tokens_per_second"], peak.value, 1)
    row["mfu_plain"] = speed.mfu(shape.flops_per_token, row["plain_tokens_per_second"], peak.value, 1)
    return row


def profile_shape(shape: Shape, a) -> dict:
    """Time per step inside the four compute phases on each side (interleaved), and a cProfile of everything else in the
    project's loop (a run of its own: the profiler slows the Trainer's Python down, not the plain loop's)."""
    device, steps = shape.args.device, shape.steps
    project, plain = Phases(device), Phases(device)
    with quiet(not a.verbose):
        r = run_pair(shape, a.warmup, steps, project_phases=project, plain_phases=plain)
    keep = undisturbed(r["project_step_seconds"], r["plain_step_seconds"], a.disturbed)
    out = {"steps_kept": len(keep), "steps": steps}
    for side, phases in (("project", project), ("plain", plain)):
        totals = r[f"{side}_step_seconds"]
        assert len(phases.steps) == len(totals), (side, len(phases.steps), len(totals))
        mean = lambda values: 1e3 * sum(values[i] for i in keep) / len(keep)  # noqa: E731
        per_step = {k: mean([p[k] for p in phases.steps]) for k in Phases.NAMES}
        per_step["total"] = mean(totals)
        per_step["other"] = mean([t - sum(p.values()) for t, p in zip(totals, phases.steps)])
        out[side] = per_step
    profiler = cProfile.Profile()
    with quiet(not a.verbose):
        run_pair(shape, a.warmup, steps, plain=False, project_phases=Phases(device, profiler))
    rows = []
    for (file, line, name), (cc, nc, tottime, cumtime, callers) in pstats.Stats(profiler).stats.items():
        if file == __file__ or "_lsprof" in name or "of 'Profiler' objects" in name:
            continue  # this benchmark's own instrumentation
        rows.append({"function": f"{short_path(file)}:{line}({name})", "calls_per_step": nc / steps,
                     "tottime_ms_per_step": 1e3 * tottime / steps, "cumtime_ms_per_step": 1e3 * cumtime / steps})
    out["profiled_ms_per_step"] = sum(r["tottime_ms_per_step"] for r in rows)
    out["top_cumulative"] = sorted(rows, key=lambda r: -r["cumtime_ms_per_step"])[:a.top]
    out["top_self"] = sorted(rows, key=lambda r: -r["tottime_ms_per_step"])[:a.top]
    return out


def short_path(file: str) -> str:
    for marker in ("site-packages/", str(REPO) + "/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def table(env: dict, rows: list[dict], command: str) -> str:
    lines = [f"commit {env['commit']} | {env['date']} | CPU {env['cpu']}, {env['cores']} cores, "
             f"{env['torch_threads']} torch threads" + (f" | GPU {env['gpu']}" if env["gpu"] else ""),
             f"python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, "
             f"accelerate {env['accelerate']}, datasets {env['datasets']}",
             f"command: {command}", "",
             "| shape | parameters | block_size x batch | project tokens/s | plain tokens/s | ratio (project/plain) "
             "| MFU project | MFU plain |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        batch = f"{r['block_size']} x {r['batch']}" + (f" x {r['gradient_accumulation_steps']} accumulation"
                                                        if r["gradient_accumulation_steps"] > 1 else "")
        ratio = f"{r['ratio']:.3f}"
        lines.append(f"| {r['shape']} | {r['parameters'] / 1e6:.2f}M | {batch} | {r['project_tokens_per_second']:,.0f} "
                     f"| {r['plain_tokens_per_second']:,.0f} | {ratio} | {fmt(r['mfu_project'], '.1%')} "
                     f"| {fmt(r['mfu_plain'], '.1%')} |")
    lines.append("")
    for r in rows:
        peak = (f"{r['peak_source']}, best of {len(r['peak_readings'])} readings: {r['peak_flops'] / 1e9:,.0f} GFLOP/s "
                f"(lowest {min(r['peak_readings']) / 1e9:,.0f})" if r["peak_readings"] else r["peak_source"])
        lines.append(f"- {r['shape']}: {r['note']}. {r['steps']} timed steps after {r['warmup']} warm-up steps, each "
                     f"step's fastest of {r['repeats']} runs on each side (each run's own ratio over all its steps: "
                     f"{', '.join(f'{x:.3f}' for x in r['run_ratios'])}); {r['train_blocks']} training blocks; optim "
                     f"{r['optim']}, {r['lr_scheduler_type']} schedule, logging_steps {r['logging_steps']}, "
                     f"dataloader_num_workers {r['dataloader_num_workers']} (plain loop: 0). Same initial weights: "
                     f"{r['same_initial_weights']}; same batches in the same order: {r['same_batches']}; same optimizer "
                     f"groups and settings: {r['same_optimizer']}. Final loss: project {r['project_final_loss']:.4f}, "
                     f"plain {r['plain_final_loss']:.4f}; largest difference over the timed steps "
                     f"{fmt(r['max_abs_loss_diff'], '.2e')}. MFU: {fmt(r['flops_per_token'] / 1e6, ',.1f')} MFLOP per "
                     f"token (speed.flops_per_token) against {r['precision']} peak, {peak}.")
    return "\n".join(lines)


def profile_report(name: str, prof: dict) -> str:
    lines = [f"### profile: {name} (ms per optimizer step, mean over {prof['steps_kept']} undisturbed of {prof['steps']} "
             "steps; other = the step's time outside the four)", "",
             "| side | total | forward | backward | clip | optimizer | other |", "|---|---|---|---|---|---|---|"]
    for side in ("project", "plain"):
        p = prof[side]
        lines.append(f"| {side} | {p['total']:.1f} | {p['forward']:.1f} | {p['backward']:.1f} | {p['clip']:.1f} "
                     f"| {p['optimizer']:.1f} | {p['other']:.1f} |")
    lines += ["", f"The project's loop outside forward, backward, clip and optimizer step, under cProfile (which slows "
              f"Python down: {prof['profiled_ms_per_step']:.1f} ms per step profiled), by cumulative time "
              "(ms per step, calls per step):", ""]
    lines += [f"  {r['cumtime_ms_per_step']:8.2f} ms {r['calls_per_step']:8.1f}  {r['function']}" for r in prof["top_cumulative"]]
    lines += ["", "... by own time:", ""]
    lines += [f"  {r['tottime_ms_per_step']:8.2f} ms {r['calls_per_step']:8.1f}  {r['function']}" for r in prof["top_self"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="demo,small", help="comma-separated: " + ", ".join(SHAPES))
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps per run")
    parser.add_argument("--small_steps", type=int, default=None,
                        help="timed steps per run of the small shape (default: 20 on a CPU, where a step takes ~0.7 s, "
                             "else --steps)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps at the start of each run")
    parser.add_argument("--repeats", type=int, default=4, help="runs per shape, each a fresh interleaved pair")
    parser.add_argument("--disturbed", type=float, default=1.5,
                        help="--profile: leave out a pair of steps slower than this times the lower quartile (0: keep all)")
    parser.add_argument("--small_batch", type=int, default=1,
                        help="sequences per step of the small shape on a CPU (a GPU runs the preset's 32 x 4)")
    parser.add_argument("--logging_steps", type=int, default=None, help="override the presets' logging_steps")
    parser.add_argument("--extra", default="", help="more pretrain.py options for every shape, e.g. "
                        "'--per_device_train_batch_size 4 --gradient_accumulation_steps 4'")
    parser.add_argument("--cache_dir", default=str(Path(tempfile.gettempdir()) / "zhpretrain-bench-cache"),
                        help="where the project caches the tokenizers and token blocks")
    parser.add_argument("--profile", action="store_true", help="also show where each side's step time goes")
    parser.add_argument("--top", type=int, default=15, help="functions listed by --profile")
    parser.add_argument("--verbose", action="store_true", help="show the project's console output")
    parser.add_argument("--out", help="also write the table and the raw numbers to this JSON file")
    a = parser.parse_args()
    if a.small_steps is None:
        a.small_steps = a.steps if torch.cuda.is_available() else 20
    names = [s.strip() for s in a.shapes.split(",") if s.strip()]
    if unknown := [s for s in names if s not in SHAPES]:
        parser.error(f"unknown shape {', '.join(unknown)}; known: {', '.join(SHAPES)}")
    command = "python tests/benchmarks/bench_train.py " + " ".join(sys.argv[1:])

    env = environment()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows, profiles = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for name in names:
            print(f"{name}: preparing data ...", file=sys.stderr, flush=True)
            with quiet(not a.verbose):
                shape = Shape(name, a, Path(tmp) / name, tuple(a.extra.split()))
            args = shape.args
            precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "tf32" if args.tf32 else "fp32"
            rows.append(bench_shape(shape, a, Peak(device, precision)))
            if a.profile:
                print(f"{name}: profiling ...", file=sys.stderr, flush=True)
                profiles[name] = profile_shape(shape, a)
    text = table(env, rows, command)
    if profiles:
        text += "\n\n" + "\n\n".join(profile_report(n, p) for n, p in profiles.items())
    print(text)
    if a.out:
        Path(a.out).write_text(json.dumps({"environment": env, "command": command, "arguments": vars(a), "rows": rows,
                                           "profiles": profiles, "table": text}, indent=1, default=str))


if __name__ == "__main__":
    main()
