"""The speedrun ablations: configs/cpu-speedrun.yaml with one change at a time, each trained for the same wall-clock
budget, scored by held-out bits per UTF-8 byte on a whole validation file. Runs one after another (they time the
machine, so nothing else should run beside them) and appends each result to a JSON file, then prints the markdown table.

    python tests/benchmarks/ablate.py --train_file ../shared/data/zhwiki-sample.jsonl \
        --validation_file ../shared/data/zhwiki-val.jsonl --only baseline,beta2_0999 [--minutes 10] [--out ablations.json]
    python tests/benchmarks/ablate.py --table --out ablations.json   # the table of what has run

Each row's command is printed with it, so any row can be re-run alone with `python pretrain.py ...`.
"""
import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_preprocess import environment  # noqa: E402

# One change at a time against the preset as it stands; the comment says what the row asks.
VARIANTS = {
    "baseline": [],
    "beta2_0999": ["--adam_beta2", "0.999"],                       # AdamW β2 0.999 (the Trainer's default) vs the preset's
    "lr_floor_10pct": ["--budget_min_lr_ratio", "0.1"],            # decay to 10% of the peak instead of to zero
    "lr_half": ["--learning_rate", "LR/2"],                        # half the peak learning rate
    "lr_double": ["--learning_rate", "LR*2"],                      # twice the peak learning rate
    "warmup_x4": ["--warmup_steps", "WARMUP*4"],                   # four times the warmup
    "batch_half": ["--per_device_train_batch_size", "BATCH/2"],    # half the sequences per step
    "batch_double": ["--per_device_train_batch_size", "BATCH*2"],  # twice the sequences per step
    "vocab_4k": ["--tokenizer_vocab_size", "4096"],
    "vocab_16k": ["--tokenizer_vocab_size", "16384"],
    "wider_256": ["--config_overrides", "hidden_size=256,intermediate_size=768,num_attention_heads=4,num_key_value_heads=4"],
    "deeper_8": ["--config_overrides", "num_hidden_layers=8"],
    "untied": ["--config_overrides", "tie_word_embeddings=false"],
    "tokenizer_head": ["--tokenizer_train_sample", "head"],        # BPE sample from the head of the file, not spread
    "muon": ["--muon_learning_rate", "LR"],                        # Muon for the hidden matrices at AdamW's scale
    "document_attention": ["--document_attention", "true"],        # attention kept inside each document
    "torch_compile": ["--torch_compile", "true"],
    # The winners together (what configs/cpu-speedrun.yaml became), with and without the smaller batch.
    "combined": ["--muon_learning_rate", "LR", "--tokenizer_vocab_size", "4096",
                 "--tokenizer_train_sample", "head", "--document_attention", "true"],
    "combined_batch_half": ["--muon_learning_rate", "LR", "--tokenizer_vocab_size", "4096",
                            "--tokenizer_train_sample", "head", "--document_attention", "true", "--per_device_train_batch_size", "BATCH/2"],
}


def preset_values(preset: Path) -> dict:
    import yaml

    return yaml.safe_load(preset.read_text(encoding="utf-8"))


def resolve(args: list[str], values: dict) -> list[str]:
    """Replace LR, WARMUP and BATCH expressions (LR*2, BATCH/2) by numbers from the preset."""
    names = {"LR": values["learning_rate"], "WARMUP": values["warmup_steps"], "BATCH": values["per_device_train_batch_size"]}

    def value(a: str) -> str:
        for name, v in names.items():
            if a.startswith(name):
                x = eval(a.replace(name, repr(float(v))), {})  # noqa: S307 (expressions from the table above)
                return f"{x:g}" if name == "LR" else str(int(x))
        return a
    return [value(a) for a in args]


def launch(cmd: list[str], log: Path):
    """Run one pretrain.py command line from the repo, its output kept in log. Returns (the process, wall seconds, the
    match of its final line: eval_loss, bits per byte; None when it never got there)."""
    print("$ " + " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - start
    log.write_text(proc.stdout)
    return proc, wall, re.search(r"final: eval_loss ([\d.]+), perplexity [\d.]+, bits per byte ([\d.]+)", proc.stdout)


def run(name: str, opts, preset: Path) -> dict:
    out_dir = Path(opts.runs) / name
    cmd = [sys.executable, "pretrain.py", str(preset), "--train_file", opts.train_file, "--validation_file", opts.validation_file,
           "--max_train_minutes", str(opts.minutes), "--output_dir", str(out_dir), "--swanlab_mode", "disabled",
           "--disable_tqdm", "true", *opts.extra.split(), *resolve(VARIANTS[name], preset_values(preset))]
    proc, wall, final = launch(cmd, Path(opts.runs) / f"{name}.log")
    timing = re.search(r"^time: .*$", proc.stdout, re.M)
    steps = re.findall(r"^step (\d+)(?:/\d+)? \|", proc.stdout, re.M)
    tokens = re.search(r"= ([\d,]+) tokens per step", proc.stdout)
    result = {"name": name, "command": "python " + " ".join(cmd[1:]), "returncode": proc.returncode, "wall_seconds": round(wall, 1),
              "eval_loss": float(final.group(1)) if final else None, "bits_per_byte": float(final.group(2)) if final else None,
              "steps": int(steps[-1]) if steps else None, "time": timing.group(0) if timing else None,
              "tokens_per_step": int(tokens.group(1).replace(",", "")) if tokens else None}
    if result["steps"] and result["tokens_per_step"]:
        result["tokens_trained"] = result["steps"] * result["tokens_per_step"]
    if proc.returncode:
        result["error"] = proc.stdout[-1500:]
    return result


def table(results: list[dict], env: dict) -> str:
    base = next((r["bits_per_byte"] for r in results if r["name"] == "baseline" and r["bits_per_byte"]), None)
    lines = [f"commit {env.get('commit')}, {env.get('date')}, {env.get('cpu')}, torch {env.get('torch')}", "",
             "| variant | tokens trained | held-out bits/byte | vs baseline | wall (all) |", "| --- | ---: | ---: | ---: | ---: |"]
    for r in results:
        bpb = r["bits_per_byte"]
        delta = f"{bpb - base:+.3f}" if bpb and base else ""
        lines.append(f"| {r['name']} | {r.get('tokens_trained', 0) / 1e6:.2f} M | {bpb if bpb else 'failed'} | {delta} | "
                     f"{r['wall_seconds'] / 60:.1f} min |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_file")
    p.add_argument("--validation_file")
    p.add_argument("--preset", default=str(REPO / "configs" / "cpu-speedrun.yaml"))
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--extra", default="", help="options added to every run, e.g. '--max_eval_samples 256' for a quicker score")
    p.add_argument("--only", default="baseline", help="comma-separated variants: " + ", ".join(VARIANTS))
    p.add_argument("--runs", default="runs/ablations")
    p.add_argument("--out", default="runs/ablations/ablations.json")
    p.add_argument("--table", action="store_true", help="only print the table of the results in --out")
    opts = p.parse_args()
    out = Path(opts.out)
    saved = json.loads(out.read_text()) if out.is_file() else {"environment": environment(), "results": []}
    if not opts.table:
        Path(opts.runs).mkdir(parents=True, exist_ok=True)
        for name in opts.only.split(","):
            if name not in VARIANTS:
                sys.exit(f"unknown variant {name}; known: {', '.join(VARIANTS)}")
            result = run(name, opts, Path(opts.preset))
            saved["results"] = [r for r in saved["results"] if r["name"] != name] + [result]
            out.write_text(json.dumps(saved, indent=1, ensure_ascii=False))
            print(json.dumps({k: result.get(k) for k in ("name", "bits_per_byte", "tokens_trained", "wall_seconds", "time")},
                             ensure_ascii=False), flush=True)
    print(table(saved["results"], saved["environment"]))


if __name__ == "__main__":
    main()
