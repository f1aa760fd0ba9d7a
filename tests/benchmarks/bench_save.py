"""Benchmark saving: how long a checkpoint save holds up training, with the manifest's digests hashed inside the save
(as before issue 16 item 4: `inline`) and in rank 0's background thread (now: `background`).

    python tests/benchmarks/bench_save.py [--shape small] [--saves 3] [--save_steps 3] [--repeats 1] [--out FILE]

The Trainer is built as pretrain.py builds it (bench_train.py's shapes: `small` is configs/small.yaml's model and
block_size on the demo corpus, one sequence per step on a CPU), and trains saves x save_steps steps with a checkpoint
every save_steps (no evaluation). Each call of PretrainTrainer._save_checkpoint is timed from its start to its return:
that is what the training loop waits for (in `background` it includes waiting for the previous checkpoint's hash, if
that one is still running). `inline` is the same save followed at once by waiting for its manifest, inside the timed
call: the old order of work (write, then hash, then go on). The table also gives each hash's own duration (timed in
the thread) and the whole train() call, whose difference between the modes is what the run gains: on a machine with
a spare core the hash runs beside training; on one busy core it takes its CPU time from the training steps instead.
The modes alternate run by run (--repeats).
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train  # noqa: E402  (puts the repository on sys.path and turns SwanLab off)
from bench_train import Shape, environment, quiet  # noqa: E402

from zhpretrain import config  # noqa: E402
from zhpretrain.model import build as modeling  # noqa: E402
from zhpretrain.report import tracking  # noqa: E402
from zhpretrain.run import checkpoint, folder  # noqa: E402
from zhpretrain.run.resume import Resume  # noqa: E402
from zhpretrain.train import trainer as training  # noqa: E402
from zhpretrain.train.callbacks import GracefulStop  # noqa: E402

MODES = ("inline", "background")


def run(shape: Shape, a, mode: str, output_dir: Path) -> dict:
    argv = [shape.preset, *shape.extra, "--output_dir", str(output_dir), "--max_steps", str(a.saves * a.save_steps),
            "--eval_strategy", "no", "--eval_on_start", "false", "--save_strategy", "steps", "--save_steps", str(a.save_steps),
            "--save_total_limit", "2", "--logging_steps", str(a.save_steps), "--report_to", "none",
            "--swanlab_mode", "disabled", "--cache_dir", a.cache_dir]
    with quiet(not a.verbose):
        _, data_args, model_args, run_args, training_args = config.parse_args(argv)
        output_dir, lock = folder.setup(training_args, data_args, run_args)
    saves, hashes, sizes = [], [], []
    write_manifest = checkpoint.write_manifest

    def timed_hash(target):  # runs in the thread (background) or inside the save (inline)
        start = time.perf_counter()
        write_manifest(target)
        hashes.append(time.perf_counter() - start)
        sizes.append(sum(p.stat().st_size for p in Path(target).rglob("*") if p.is_file()))

    checkpoint.write_manifest = timed_hash
    try:
        resume = Resume(None, {})
        with quiet(not a.verbose):
            model, params = modeling.build(model_args, training_args, shape.tok, data_args.block_size, resume)
            batch = training.global_batch(training_args, data_args.block_size, data_args.streaming)
            tracker = tracking.start(run_args, training_args, main_process=True, config={})
            trainer = training.build(model, shape.tok, shape.datasets, batch, resume, GracefulStop(), tracker, params,
                                     (data_args, run_args, training_args))
        save = trainer._save_checkpoint

        def timed_save(model, trial):
            start = time.perf_counter()
            save(model, trial)
            if mode == "inline":
                trainer.wait_for_manifest()
            saves.append(time.perf_counter() - start)
        trainer._save_checkpoint = timed_save
        start = time.perf_counter()
        with quiet(not a.verbose):
            trainer.train()
        train_seconds = time.perf_counter() - start
        tracker.finish()
    finally:
        checkpoint.write_manifest = write_manifest
        lock.release()
    return {"mode": mode, "save_seconds": saves, "hash_seconds": hashes, "checkpoint_bytes": sizes,
            "train_seconds": train_seconds, "steps": a.saves * a.save_steps, "parameters": params["parameters"]}


def table(env: dict, shape: Shape, runs: list[dict], command: str) -> str:
    lines = [f"command: {command}",
             f"commit {env['commit']}, {env['date']}; {env['cpu']}, {env['cores']} cores, {env['torch_threads']} torch "
             f"threads, GPU: {env['gpu'] or 'none'}; python {env['python']}, torch {env['torch']}, transformers {env['transformers']}",
             f"shape {shape.name}: {shape.note}; {runs[0]['parameters'] / 1e6:.2f}M parameters, checkpoint "
             f"{statistics.median(b for r in runs for b in r['checkpoint_bytes']) / 2**20:.0f} MiB", "",
             "| mode | saves | step path per save (median, s) | each save (s) | hash (median, s) | train() for "
             f"{runs[0]['steps']} steps (s) |", "| --- | --- | --- | --- | --- | --- |"]
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        saves = [s for r in mine for s in r["save_seconds"]]
        hashes = [h for r in mine for h in r["hash_seconds"]]
        each, trains = ", ".join(f"{s:.2f}" for s in saves), ", ".join(f"{r['train_seconds']:.1f}" for r in mine)
        lines.append(f"| {mode} | {len(saves)} | {statistics.median(saves):.3f} | {each} | {statistics.median(hashes):.3f} | {trains} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="small", choices=sorted(bench_train.SHAPES))
    parser.add_argument("--saves", type=int, default=3, help="checkpoints per run")
    parser.add_argument("--save_steps", type=int, default=3, help="training steps between checkpoints")
    parser.add_argument("--repeats", type=int, default=1, help="runs per mode, alternating")
    parser.add_argument("--small_batch", type=int, default=1, help="sequences per step of the small shape on a CPU")
    parser.add_argument("--cache_dir", default=str(Path(tempfile.gettempdir()) / "zhpretrain-bench-cache"))
    parser.add_argument("--verbose", action="store_true", help="show the project's console output")
    parser.add_argument("--out", help="also write the table and the raw numbers to this JSON file")
    a = parser.parse_args()
    command = "python tests/benchmarks/bench_save.py " + " ".join(sys.argv[1:])
    env = environment()
    shape_args = types.SimpleNamespace(small_batch=a.small_batch, small_steps=1, steps=1, cache_dir=a.cache_dir,
                                       logging_steps=None, verbose=a.verbose)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-save-") as tmp:
        print(f"{a.shape}: preparing data ...", file=sys.stderr, flush=True)
        with quiet(not a.verbose):
            shape = Shape(a.shape, shape_args, Path(tmp) / a.shape)
        for r in range(a.repeats):
            for mode in MODES:
                print(f"{a.shape}: run {r + 1}, {mode} ...", file=sys.stderr, flush=True)
                runs.append(run(shape, a, mode, Path(tmp) / f"{mode}-{r}"))
    text = table(env, shape, runs, command)
    print(text)
    if a.out:
        Path(a.out).write_text(json.dumps({"environment": env, "command": command, "arguments": vars(a), "runs": runs,
                                           "table": text}, indent=1))


if __name__ == "__main__":
    main()
