"""The GPU check: what a first day on a GPU must measure, in at most 9 minutes on one GPU.

    python tests/benchmarks/gpu_check.py [--out gpu-check.json] [--budget_minutes 9]
    python tests/benchmarks/gpu_check.py --reduced      # a CPU: the tiny shape, a few steps (tests/test_gpu_check.py)

For the small and tutorial shapes in bf16 (their presets, on data/demo-zhwiki.jsonl; see bench_train.SHAPES), and for
each attention kernel installed (sdpa; flash_attention_2 when flash-attn is) with torch.compile off and on, and Liger's
fused linear + cross-entropy where liger-kernel is installed (project side only), and the presets' 32 x 4
micro-batches also as 128 x 1 (the same tokens per optimizer step), it runs
the project's Trainer path and a plain PyTorch loop on the same shape, weights, batches and optimizer, interleaved
step by step (bench_train.run_pair), and reports per configuration:
- tokens/s and MFU of each side, and their ratio (target: project >= 0.98 of plain);
- host synchronisations per plain project step (one that neither logs, evaluates nor saves): CUDA's own count
  (torch.cuda.set_sync_debug_mode("warn"): one warning per synchronising call) and the CPU-side count of host
  reads of tensor values (host_reads.HostReads), both 0 when nothing waits (target);
- the peak memory allocated during each side's steps (both models stay resident: each side's figure includes the
  other's weights and optimizer state).
It prints one table and writes it, with the commit, date, GPU and library versions, as JSON (--out).
Configurations run cheapest first; one that would not finish inside --budget_minutes is skipped and listed as such.
"""
import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train  # noqa: E402
from host_reads import HostReads, PerStep  # noqa: E402


class SyncWarnings:
    """CUDA's synchronisation warnings (set_sync_debug_mode("warn")), counted under the same step keys as HostReads."""

    def __init__(self, reads: HostReads):
        self.reads, self.counts = reads, {}

    def __enter__(self):
        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("always")  # every occurrence, not once per call site
        self._show = warnings.showwarning
        warnings.showwarning = self._count
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def _count(self, message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message).lower():
            if self.reads.key is not None and not self.reads.paused:
                self.counts[self.reads.key] = self.counts.get(self.reads.key, 0) + 1
            return
        self._show(message, category, filename, lineno, file, line)

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = self._show
        self._catch.__exit__(*exc)


@contextlib.contextmanager
def counting(device):
    """Count host reads (and on CUDA, synchronisations) of the project's steps only: the plain loop's steps and the
    benchmark's own synchronisations between them are left out."""
    reads, steps = HostReads(), []
    syncs = SyncWarnings(reads) if device.type == "cuda" else contextlib.nullcontext()
    sync, plain_step = bench_train.sync, bench_train.PlainLoop.step

    def paused(fn):
        def call(*args, **kwargs):
            with reads.pause():
                return fn(*args, **kwargs)
        return call
    bench_train.sync, bench_train.PlainLoop.step = paused(sync), paused(plain_step)
    try:
        with reads, syncs:
            yield reads, syncs, steps, (lambda trainer: steps.append(PerStep(reads).attach(trainer)))
    finally:
        bench_train.sync, bench_train.PlainLoop.step = sync, plain_step


def per_plain_step(counts: dict, steps: PerStep, timed: range) -> float | None:
    """The mean count over the timed steps that neither logged, evaluated nor saved."""
    plain = [k for k in steps.plain_steps() if k in timed]
    return sum(counts.get(k, 0) for k in plain) / len(plain) if plain else None


def measure(name: str, kernel: str, compiled: bool, liger: bool, split: tuple, a, workdir: Path, device) -> dict:
    extra = (("--torch_compile", "true") if compiled else ()) + (("--use_liger_kernel", "true") if liger else ())
    if split:
        extra += ("--per_device_train_batch_size", str(split[0]), "--gradient_accumulation_steps", str(split[1]))
    folder = f"{name}-{kernel}-{int(compiled)}-{int(liger)}-{'x'.join(map(str, split)) or 'preset'}"
    with bench_train.quiet(not a.verbose):
        shape = bench_train.Shape(name, a, workdir / folder, extra, kernel)
    args = shape.args
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    peak = bench_train.Peak(device, precision)
    peak.measure()
    timed = range(a.warmup + 1, a.warmup + shape.steps + 1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with counting(device) as (reads, syncs, steps, attach), bench_train.quiet(not a.verbose):
        r = bench_train.run_pair(shape, a.warmup, shape.steps, hooks=(attach,))
    seconds = time.perf_counter() - start
    tokens = sum(r["step_tokens"])
    project, plain = tokens / sum(r["project_step_seconds"]), tokens / sum(r["plain_step_seconds"])
    row = {"shape": name, "attn_implementation": kernel, "torch_compile": compiled, "liger": liger, "precision": precision,
           "parameters": shape.parameters, "block_size": shape.block_size, "batch": args.per_device_train_batch_size,
           "gradient_accumulation_steps": args.gradient_accumulation_steps, "warmup": a.warmup, "steps": shape.steps,
           "logging_steps": args.logging_steps, "seconds": seconds,
           "project_tokens_per_second": project, "plain_tokens_per_second": plain, "ratio": project / plain,
           "mfu_project": bench_train.speed.mfu(shape.flops_per_token, project, peak.value, 1),
           "mfu_plain": bench_train.speed.mfu(shape.flops_per_token, plain, peak.value, 1),
           "peak_flops": peak.value, "peak_source": peak.source,
           "cuda_syncs_per_plain_step": per_plain_step(syncs.counts, steps[0], timed) if device.type == "cuda" else None,
           "host_reads_per_plain_step": per_plain_step(reads.counts, steps[0], timed),
           "host_read_sites": {str(k): dict(v) for k, v in reads.sites.items() if k in timed},
           "project_peak_bytes": r["project_peak_bytes"], "plain_peak_bytes": r["plain_peak_bytes"],
           "max_abs_loss_diff": max(abs(x - y) for x, y in zip(r["project_losses"], r["plain_losses"]))}
    return row


def fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def table(env: dict, rows: list[dict], skipped: list[str], command: str) -> str:
    lines = [f"commit {env['commit']} | {env['date']} | " + (f"GPU {env['gpu']}" if env["gpu"] else f"CPU {env['cpu']}"),
             f"python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, accelerate {env['accelerate']}"
             + (f", flash-attn {env['flash_attn']}" if env.get("flash_attn") else ", no flash-attn"),
             f"command: {command}", "",
             "| shape | kernel | compile | Liger | batch | project tok/s | plain tok/s | ratio | MFU project | MFU plain "
             "| CUDA syncs / plain step | host reads / plain step | peak GiB project / plain | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    gib = lambda b: fmt(b / 2**30 if b is not None else None, ".2f")  # noqa: E731
    for r in rows:
        lines.append(f"| {r['shape']} | {r['attn_implementation']} | {'on' if r['torch_compile'] else 'off'} "
                     f"| {'on' if r['liger'] else 'off'} "
                     f"| {r['block_size']} x {r['batch']} x {r['gradient_accumulation_steps']} "
                     f"| {r['project_tokens_per_second']:,.0f} | {r['plain_tokens_per_second']:,.0f} | {r['ratio']:.3f} "
                     f"| {fmt(r['mfu_project'], '.1%')} | {fmt(r['mfu_plain'], '.1%')} "
                     f"| {fmt(r['cuda_syncs_per_plain_step'], '.2f')} | {fmt(r['host_reads_per_plain_step'], '.2f')} "
                     f"| {gib(r['project_peak_bytes'])} / {gib(r['plain_peak_bytes'])} | {r['seconds']:.0f} |")
    lines += ["", "Each row: one interleaved run of the project's Trainer and the plain loop, "
              "timed steps after the warm-up (compilation happens there); ratio = project / plain tokens/s; "
              "MFU against the peak named in the JSON (speed.peak_flops)."]
    lines += [f"- skipped: {s}" for s in skipped]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reduced", action="store_true", help="the tiny shape, sdpa, compile off, a few steps (CPU tests)")
    parser.add_argument("--shapes", default=None, help="comma-separated (default: small,tutorial; tiny with --reduced)")
    parser.add_argument("--steps", type=int, default=None, help="timed optimizer steps per run (default 20; 3 reduced)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; 1 reduced)")
    parser.add_argument("--logging_steps", type=int, default=None,
                        help="steps between the Trainer's logs (default 10; 2 reduced), so that plain steps exist")
    parser.add_argument("--budget_minutes", type=float, default=9.0, help="skip configurations that would end later")
    parser.add_argument("--cache_dir", default=str(Path(tempfile.gettempdir()) / "zhpretrain-bench-cache"))
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--out", help="write the table and the numbers to this JSON file")
    a = parser.parse_args(argv)
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = (a.shapes or ("tiny" if a.reduced else "small,tutorial")).split(",")
    a.steps = a.steps or (3 if a.reduced else 20)
    a.small_steps, a.warmup = a.steps, a.warmup if a.warmup is not None else (1 if a.reduced else 3)
    a.logging_steps = a.logging_steps or (2 if a.reduced else 10)
    a.small_batch = 0  # the presets' own micro-batches: a GPU check measures them as shipped
    flash = importlib.util.find_spec("flash_attn") is not None and device.type == "cuda"
    kernels = ["sdpa"] + (["flash_attention_2"] if flash and not a.reduced else [])
    compiles = [False] if a.reduced else [False, True]
    # Liger's fused linear + cross-entropy (the project side only: the plain loop keeps torch's), where installed.
    liger = importlib.util.find_spec("liger_kernel") is not None and device.type == "cuda" and not a.reduced
    # Cheapest first: every shape uncompiled, then Liger, then compiled (minutes of compilation each).
    # The presets' 32 x 4 micro-batches, and the same 65,536 tokens per step as 128 x 1 (less Python per token).
    plan = [(False, k, False, (), n) for k in kernels for n in names]
    plan += [(False, "sdpa", False, (128, 1), n) for n in names if not a.reduced]
    plan += [(False, "sdpa", True, (), n) for n in names if liger]
    plan += [(True, k, False, (), n) for k in kernels for n in names if True in compiles]
    env = bench_train.environment()
    if liger:
        env["liger_kernel"] = importlib.metadata.version("liger-kernel")
    if flash:
        env["flash_attn"] = importlib.import_module("flash_attn").__version__
    rows, skipped, longest = [], [], {}
    command = "python tests/benchmarks/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for compiled, kernel, fused, split, name in plan:
            left = a.budget_minutes * 60 - (time.perf_counter() - started)
            guess = longest.get((name, compiled), longest.get((name, False), 0)) * (3 if compiled and (name, True) not in longest else 1)
            label = (f"{name} {kernel} compile {'on' if compiled else 'off'}" + (" Liger" if fused else "")
                     + (f" {split[0]} x {split[1]}" if split else ""))
            if guess > left:
                skipped.append(f"{label} (about {guess:.0f} s expected, {left:.0f} s of the budget left)")
                continue
            print(f"{label} ...", file=sys.stderr, flush=True)
            row = measure(name, kernel, compiled, fused, split, a, Path(tmp), device)
            longest[(name, compiled)] = max(longest.get((name, compiled), 0), row["seconds"])
            rows.append(row)
    text = table(env, rows, skipped, command)
    print(text)
    result = {"environment": env, "command": command, "arguments": vars(a), "rows": rows, "skipped": skipped, "table": text}
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
