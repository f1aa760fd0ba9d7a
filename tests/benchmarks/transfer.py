"""Which speedrun wins transfer with size (issue 19.3): the cpu-speedrun recipe with one win taken out at a time, at
three model sizes, each trained for the same number of tokens per parameter (so the same FLOPs for every recipe at a
size), scored by held-out bits per UTF-8 byte. Runs one after another and appends to a JSON file, then prints the table.

    python tests/benchmarks/transfer.py --train_file ../shared/data/zhwiki-sample.jsonl \
        --validation_file ../shared/data/zhwiki-val.jsonl [--sizes 2,3,4] [--variants full,adamw] [--tokens_per_param 2]
    python tests/benchmarks/transfer.py --table --out runs/transfer/transfer.json

A size is a depth d on the dial's shape rule at these sizes: hidden 32*d, d heads of 32, SwiGLU width 3*hidden,
vocabulary fixed at the preset's 4096 so that only the recipe changes. The learning-rate schedule is the Trainer's
linear decay over the step count (no wall-clock budget: the horizon is in tokens, so the machine's load does not
change the result, only the wall time).
"""
import argparse
import json
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ablate import launch  # noqa: E402
from bench_preprocess import environment  # noqa: E402
from zhpretrain import scale  # noqa: E402

# One win of the preset taken out at a time; "full" is configs/cpu-speedrun.yaml's recipe.
VARIANTS = {
    "full": {},
    "adamw": {"muon_learning_rate": None},            # AdamW for the hidden matrices too (no Muon)
    "no_doc_attn": {"document_attention": False},     # attention crosses the EOS between packed documents
    "beta2_0999": {"adam_beta2": 0.999},              # the Trainer's default β2
    "muon_lr_x2": {"muon_learning_rate": 6e-3},       # Muon's peak at twice AdamW's 3e-3 (its updates' RMS is 0.2 x lr)
    "muon_lr_x4": {"muon_learning_rate": 1.2e-2},     # and at four times
    # Added one at a time (2026-12-02, run with --extra "--adam_beta2 0.999", the dial's beta2 beside Muon):
    "untied": {"tie": False},                         # a separate output layer (the FLOPs are the same: a lookup is free)
    "tied_emb_x3": {"embedding_lr_factor": 3},        # the tied embedding table at 3 x the learning rate
    "tied_emb_x10": {"embedding_lr_factor": 10},      # ... at 10 x (won at d2, lost in the d4 speedrun)
    "tied_emb_x30": {"embedding_lr_factor": 30},      # ... at 30 x
    "untied_emb_x3": {"tie": False, "embedding_lr_factor": 3},    # the input table alone at 3 x
    "untied_emb_x10": {"tie": False, "embedding_lr_factor": 10},  # ... at 10 x
    "wsd_decay02": {"decay_share": 0.2},              # warmup-stable-decay, (1-sqrt) over the last 20% (the dial's)
    "wsd_decay05": {"decay_share": 0.5},              # ... over the last half
    "tied_emb_x3_wsd_decay05": {"embedding_lr_factor": 3, "decay_share": 0.5},
    "tied_emb_x10_wsd_decay02": {"embedding_lr_factor": 10, "decay_share": 0.2},
    # 2026-12-02 (later), with --extra "--adam_beta2 0.999":
    "zero_init": {"zero_init_residual": True},        # the residual output projections start at zero (modded-nanogpt, nanochat)
    "no_weight_decay": {"weight_decay": 0.0},         # Muon's and AdamW's decoupled weight decay off (the recipe's 0.1)
}
RECIPE_KEYS = {"tie", "embedding_lr_factor", "decay_share"}  # not options: run() turns them into options


def shape(depth: int) -> dict:
    """The dial's shape at this depth (scale.shape), as --config_overrides keys (head_dim follows hidden / heads)."""
    return {k: v for k, v in scale.shape(depth).items() if k != "head_dim"}


def params(depth: int, vocab: int = 4096) -> tuple[int, int]:
    """(non-embedding, total) parameters of the shape, the embedding tied."""
    body = scale.body_params(scale.shape(depth))
    return body, body + vocab * scale.shape(depth)["hidden_size"]


def run(depth: int, variant: str, opts) -> dict:
    base = yaml.safe_load((REPO / "configs" / "cpu-speedrun.yaml").read_text(encoding="utf-8"))
    base.pop("max_train_minutes")
    # The recipe spelled out, the dial off: the shape comes from --config_overrides below, the vocabulary and the
    # rest stay the speedrun's at every size, and the schedule is the Trainer's linear decay over the steps.
    base.update(depth=0, model_config="configs/models/qwen2-speedrun.json", block_size=256, tokenizer_vocab_size=4096,
                muon_learning_rate=base["learning_rate"], document_attention=True, adam_beta2=0.95, weight_decay=0.1,
                lr_scheduler_type="linear")
    base.pop("global_batch_tokens", None)
    recipe = {k: v for k, v in VARIANTS[variant].items() if k in RECIPE_KEYS}
    if "embedding_lr_factor" in recipe:
        base["embedding_learning_rate"] = recipe["embedding_lr_factor"] * base["learning_rate"]
    for k, v in VARIANTS[variant].items():
        if k in RECIPE_KEYS:
            continue
        if v is None:
            base.pop(k, None)
        else:
            base[k] = v
    name = f"d{depth}-{variant}"
    out_dir = Path(opts.runs) / name
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    preset = Path(opts.runs) / f"{name}.yaml"
    body, total = params(depth)
    tokens_per_step = base["per_device_train_batch_size"] * base["block_size"]
    steps = round(opts.tokens_per_param * total / tokens_per_step)
    if "decay_share" in recipe:
        base.update(lr_scheduler_type="warmup_stable_decay", lr_scheduler_kwargs={
            "num_decay_steps": round(recipe["decay_share"] * steps), "decay_type": "1-sqrt"})
    preset.write_text(yaml.safe_dump(base, allow_unicode=True), encoding="utf-8")
    overrides = ",".join(f"{k}={v}" for k, v in shape(depth).items()) + ("" if recipe.get("tie", True) else ",tie_word_embeddings=False")
    cmd = [sys.executable, "pretrain.py", str(preset), "--train_file", opts.train_file, "--validation_file", opts.validation_file,
           "--output_dir", str(out_dir), "--max_steps", str(steps), "--save_strategy", "no", "--swanlab_mode", "disabled",
           "--disable_tqdm", "true", "--config_overrides", overrides, "--max_eval_samples", str(opts.max_eval_samples),
           "--allow_existing_output_dir", "true", *opts.extra.split()]
    proc, wall, final = launch(cmd, Path(opts.runs) / f"{name}.log")
    result = {"name": name, "depth": depth, "variant": variant, "non_embedding_params": body, "params": total,
              "steps": steps, "tokens": steps * tokens_per_step, "command": "python " + " ".join(cmd[1:]),
              "returncode": proc.returncode, "wall_seconds": round(wall, 1),
              "bits_per_byte": float(final.group(2)) if final else None}
    if proc.returncode:
        result["error"] = proc.stdout[-1500:]
    return result


def table(results: list[dict], env: dict) -> str:
    sizes = sorted({r["depth"] for r in results})
    cell = {(r["depth"], r["variant"]): r for r in results}
    head = " | ".join(f"d{d}: {cell[(d, 'full')]['non_embedding_params'] / 1e6:.2f} M, {cell[(d, 'full')]['tokens'] / 1e6:.2f} M tok"
                      if (d, "full") in cell else f"d{d}" for d in sizes)
    lines = [f"commit {env.get('commit')}, {env.get('date')}, {env.get('cpu')}, torch {env.get('torch')}", "",
             f"| recipe | {head} |", "| --- |" + " ---: |" * len(sizes)]
    for v in VARIANTS:
        row = []
        for d in sizes:
            r, f = cell.get((d, v)), cell.get((d, "full"))
            if not r or not r["bits_per_byte"]:
                row.append("" if not r else "failed")
            elif v == "full" or not f or not f["bits_per_byte"]:
                row.append(f"{r['bits_per_byte']:.3f}")
            else:
                row.append(f"{r['bits_per_byte']:.3f} ({r['bits_per_byte'] - f['bits_per_byte']:+.3f})")
        lines.append(f"| {v} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_file")
    p.add_argument("--validation_file")
    p.add_argument("--sizes", default="2,3,4", help="depths on the dial")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--tokens_per_param", type=float, default=2.0)
    p.add_argument("--max_eval_samples", type=int, default=512, help="held-out blocks scored (the file's head)")
    p.add_argument("--extra", default="")
    p.add_argument("--runs", default="runs/transfer")
    p.add_argument("--out", default="runs/transfer/transfer.json")
    p.add_argument("--table", action="store_true")
    opts = p.parse_args()
    out = Path(opts.out)
    saved = json.loads(out.read_text()) if out.is_file() else {"environment": environment(), "results": []}
    if not opts.table:
        out.parent.mkdir(parents=True, exist_ok=True)
        for variant in opts.variants.split(","):
            for depth in map(int, opts.sizes.split(",")):
                result = run(depth, variant, opts)
                saved["results"] = [r for r in saved["results"] if r["name"] != result["name"]] + [result]
                out.write_text(json.dumps(saved, indent=1, ensure_ascii=False))
                print(json.dumps({k: result.get(k) for k in ("name", "bits_per_byte", "tokens", "wall_seconds")}), flush=True)
    print(table(saved["results"], saved["environment"]))


if __name__ == "__main__":
    main()
