"""The one dial: `--depth` derives every other hyperparameter, so any size comes out near compute-optimal untuned.

As in nanochat (scripts/base_train.py), the user picks the number of layers and the rules below pick the rest. Each rule
names its source; where the project's own CPU measurements (docs/recipe.md) disagree with the published rule, the
measurement wins and the comment says so. An option given explicitly (in the preset or on the command line) always
wins over the derived value, and the console says which values were derived.

    python -m zhpretrain.scale 4 12 16         # the table of what each depth derives
"""
import math
import sys

ASPECT = 32        # hidden = 32 x depth. nanochat uses 64; deep-and-thin wins below 1B parameters (MobileLLM, Liu et al.
                   # 2024: 125M at 30 x 576), and on the CPU 128 x 4 beat 256 x 4 by 0.17 and 128 x 8 by 0.13 bits/byte.
TOKENS_PER_PARAM = 12  # horizon: nanochat's measured compute-optimal ratio (its dev/LOG.md), counting the transformer's
                       # matrices and the output layer (Chinchilla's 20 counts everything, the embeddings too).
MIN_STEPS = 2000   # the batch leaves the optimizer at least this many steps: at small scale steps beat tokens per step
                   # (CPU: 8 x 256 beat 16 x 256 by 0.085 bits/byte); nanochat's d12 reference trains ~2,500 steps.
LR_CALIBRATION = 0.5  # DeepSeek's learning-rate law halved: at the CPU speedrun's 3.8e13 FLOPs it says 6.2e-3, where 3e-3
                      # measured best (6e-3: +0.016, 1.5e-3: +0.047 bits/byte).
WARMUP_SHARE, MIN_WARMUP = 0.02, 20  # warmup: 2% of the steps (the speedrun's 50 of 2,251), at least 20
DECAY_SHARE = 0.2  # warmup-stable-decay: (1-sqrt) over the last 20% matches a tuned cosine (Hägele et al. 2024)
VOCAB_RANGE = (2048, 32768)  # the byte-level BPE's table (docs/tokenizer.md) spans 4k-32k; 2048 for tiny corpora
ADAMW_ONLY_BETA2 = 0.95  # AdamW for every parameter: beta2 0.95 (0.999 lost 0.089 bits/byte in the depth-4 ablation)


def _pow2(x: float) -> int:
    return 2 ** round(math.log2(x))


def shape(depth: int) -> dict:
    """Qwen2 shape: hidden 32 x depth; heads of 32 below hidden 512 and of 64 from there (FlashAttention's fast head
    sizes; the CPU preset's 4 heads of 32); as many KV heads as heads (nanochat); SwiGLU width 3 x hidden (the presets')."""
    head_dim = 64 if ASPECT * depth >= 512 else 32
    hidden = math.ceil(ASPECT * depth / head_dim) * head_dim
    heads = hidden // head_dim
    return {"num_hidden_layers": depth, "hidden_size": hidden, "intermediate_size": 3 * hidden,
            "num_attention_heads": heads, "num_key_value_heads": heads, "head_dim": head_dim}


def body_params(s: dict) -> int:
    """Parameters of the transformer without embeddings: q,k,v,o with q/k/v biases, SwiGLU, two RMSNorms a layer, final norm."""
    h, i = s["hidden_size"], s["intermediate_size"]
    return s["num_hidden_layers"] * (4 * h * h + 3 * h + 3 * h * i + 2 * h) + h


def derive(depth: int, max_steps: int | None = None, batch: int | None = None) -> dict:
    """Every value the dial sets at this depth: option name -> value, plus the shape and the numbers behind them. A
    given max_steps or batch (tokens a step) is kept, and the horizon's steps, warmup and decay follow it."""
    s = shape(depth)
    h, body = s["hidden_size"], body_params(s)
    # Vocabulary: the tied embedding at most as large as the body (at 25M parameters an untied 32k one is a third of
    # the model and a quarter of its FLOPs), as a power of two within the BPE's range.
    vocab = min(max(2 ** int(math.log2(body / h)), VOCAB_RANGE[0]), VOCAB_RANGE[1])
    # Context: twice the width keeps attention's share of the FLOPs the same at every depth (attention ~ T x h, the
    # matrices ~ 12 h^2 per token a layer), within 128-2048.
    block_size = min(max(_pow2(2 * h), 128), 2048)
    scaling = body + vocab * h  # matrices + output layer, as nanochat counts (tied: the embedding is the output layer)
    tokens = TOKENS_PER_PARAM * scaling
    flops = 6 * scaling * tokens
    # Batch and learning rate from DeepSeek LLM's compute laws (Bi et al. 2024: B = 0.292 C^0.3271 tokens,
    # lr = 0.3118 C^-0.125, fitted on 1e17-3e20 FLOPs), the batch capped to leave MIN_STEPS steps and made whole sequences.
    if not batch:
        batch = _pow2(0.292 * flops ** 0.3271)
        while batch > block_size and tokens / batch < MIN_STEPS:
            batch //= 2
        batch = max(batch, block_size)
    lr = float(f"{LR_CALIBRATION * 0.3118 * flops ** -0.125:.2g}")
    steps = max_steps if max_steps and max_steps > 0 else max(1, round(tokens / batch))  # warmup and decay follow a given max_steps
    options = {
        "block_size": block_size, "tokenizer_vocab_size": vocab, "global_batch_tokens": batch, "max_steps": steps,
        "learning_rate": lr, "muon_learning_rate": lr,  # Muon's update is scaled to AdamW's RMS (optim.py): one rate
        "warmup_steps": min(max(MIN_WARMUP, round(WARMUP_SHARE * steps)), steps - round(DECAY_SHARE * steps)),
        "lr_scheduler_type": "warmup_stable_decay",
        "lr_scheduler_kwargs": {"num_decay_steps": round(DECAY_SHARE * steps), "decay_type": "1-sqrt", "min_lr_ratio": 0.0},
        "budget_decay_ratio": DECAY_SHARE,
        # The CPU ablations' winners (docs/recipe.md). Not here: a faster embedding (--embedding_learning_rate 10 x the
        # learning rate won 0.135 bits/byte at depth 2 and lost 0.077 in the depth-4 speedrun: it does not transfer), nor
        # --zero_init_residual (0.023 / 0.007 / 0.001 at depth 2 / 3 / 4: it fades with size).
        "document_attention": True, "weight_decay": 0.1,
        # AdamW's beta2 for what AdamW trains beside Muon (embeddings, norms, biases): the Trainer's 0.999, which beat 0.95
        # by 0.024 / 0.030 / 0.028 bits/byte at depth 2 / 3 / 4 (tests/benchmarks/transfer.py, 2026-12-02); AdamW for everything
        # wants 0.95 (the 2-minute ablation at depth 4: 0.999 lost 0.089), so apply() sets that where Muon cannot run.
        "adam_beta2": 0.999,
    }
    return {"options": options, "shape": s, "body_params": body, "params": body + vocab * h, "tokens": tokens, "flops": flops}


def apply(namespace, explicit) -> str:
    """Set every derived option the user did not give (explicit(key) says whether the preset or the command line did);
    the shape goes into config_overrides ahead of the user's own. Returns the console's dial: line."""
    import torch

    from .run.launch import sharded

    d = derive(namespace.depth, namespace.max_steps if explicit("max_steps") else None,
               namespace.global_batch_tokens if explicit("global_batch_tokens") else None)
    options = d["options"]
    if explicit("learning_rate"):  # one rate for both optimizers: Muon follows a given learning_rate
        options["muon_learning_rate"] = namespace.learning_rate
    if explicit("num_train_epochs") and not explicit("max_steps"):  # a given number of epochs is the horizon
        options.pop("max_steps")
    if explicit("gradient_accumulation_steps") and not explicit("global_batch_tokens"):
        options.pop("global_batch_tokens")  # the batch given the Trainer's way: per device x accumulation x processes
    # a time budget has its own schedule (train/budget.py), and a step-count schedule has no budget decay
    skip = {"lr_scheduler_type", "lr_scheduler_kwargs"} if namespace.max_train_minutes else {"budget_decay_ratio"}
    # AdamW for everything rather than a refusal where Muon cannot run: torch < 2.9 has no torch.optim.Muon
    # (config.check_versions), and FSDP / DeepSpeed shard the matrices Muon orthogonalises whole (model/optim.py).
    no_muon = not hasattr(torch.optim, "Muon") or sharded(namespace)
    if no_muon:
        skip.add("muon_learning_rate")
        options["adam_beta2"] = ADAMW_ONLY_BETA2
    given = [key for key in options if explicit(key)]
    derived = [key for key in options if key not in given and key not in skip]
    for key in derived:
        setattr(namespace, key, options[key])
    own_shape = explicit("model_config")  # a model_config given keeps its own shape (and architecture); the rest is derived
    if not own_shape:
        namespace.config_overrides = config_overrides(namespace.depth, namespace.config_overrides)
        namespace.model_config = BASE_CONFIG
    block = namespace.block_size
    if "global_batch_tokens" in derived and namespace.global_batch_tokens % block:  # whole sequences of a given block_size
        namespace.global_batch_tokens = max(1, round(namespace.global_batch_tokens / block)) * block
    return describe(namespace, d, derived, given, no_muon, own_shape)


BASE_CONFIG = "configs/models/qwen2-depth.json"  # the Qwen2 config the dial's shape is written into


def config_overrides(depth: int, user: str | None) -> str:
    """The shape as --config_overrides (the user's own overrides after it, so they win), max_position_embeddings
    covering the block."""
    d = derive(depth)
    pairs = {k: v for k, v in d["shape"].items() if k != "head_dim"}  # hidden / heads; model/build.py keeps it in step
    pairs["max_position_embeddings"] = max(1024, d["options"]["block_size"])
    derived = ",".join(f"{k}={v}" for k, v in pairs.items())
    return f"{derived},{user}" if user else derived


def describe(namespace, d: dict, derived: list[str], given: list[str], no_muon: bool, own_shape: bool) -> str:
    """One line: the shape and the values this run uses (derived or given), and which of them the dial set."""
    s, v = d["shape"], vars(namespace)
    batch = (f"{v['global_batch_tokens']:,} tokens a step" if v["global_batch_tokens"] else
             f"{v['per_device_train_batch_size']} x {v['gradient_accumulation_steps']} sequences a step a process")
    if own_shape:
        return (f"dial: depth {namespace.depth} -> the shape of {namespace.model_config} (given), block {v['block_size']}, "
                f"{batch}, learning rate {v['learning_rate']:g}, {v['max_steps']:,} steps")
    steps = f"{v['max_steps']:,} steps" + (f" (the horizon: {d['tokens'] / 1e6:.1f}M tokens, {TOKENS_PER_PARAM} per parameter)"
                                          if "max_steps" in derived else "")
    return (f"dial: depth {namespace.depth} -> hidden {s['hidden_size']}, {s['num_attention_heads']} heads, "
            f"~{(d['body_params'] + v['tokenizer_vocab_size'] * s['hidden_size']) / 1e6:.2f}M parameters, vocabulary {v['tokenizer_vocab_size']}, block {v['block_size']}, "
            f"{batch}, learning rate {v['learning_rate']:g}, {steps}"
            + ("; AdamW for every parameter (no Muon: sharded training or torch < 2.9)" if no_muon else "")
            + (f"; given instead of derived: {', '.join(given)}" if given else ""))


def flops_per_token(depth: int, vocab: int | None = None) -> int:
    """Training FLOPs per token: 6 per scaling parameter plus attention's 12 x layers x hidden x block (nanochat's
    estimate_flops, the causal mask not halved)."""
    d = derive(depth)
    h, o = d["shape"]["hidden_size"], d["options"]
    return 6 * (d["body_params"] + (vocab or o["tokenizer_vocab_size"]) * h) + 12 * depth * h * o["block_size"]


def fitting_depth(minutes: float, tokens_per_second: float, at_depth: int) -> int:
    """The largest depth whose compute-optimal horizon trains within the budget, the throughput at other depths
    scaled from the one measured by FLOPs per token (an estimate: small models run below the machine's peak)."""
    rate = tokens_per_second * flops_per_token(at_depth)  # FLOPs per second
    fits = [d for d in range(1, 65) if derive(d)["tokens"] * flops_per_token(d) / rate <= minutes * 60]
    return max(fits, default=1)


def main(argv: list[str]) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m zhpretrain.scale", description="What the dial derives at each depth; "
                                "with --max_train_minutes, the depth whose compute-optimal horizon fits the budget.")
    p.add_argument("depths", nargs="*", type=int, default=[2, 4, 8, 12, 16])
    p.add_argument("--max_train_minutes", type=float, help="a training budget to fit")
    p.add_argument("--tokens_per_second", type=float, help="measured throughput (the console's tok/s) ...")
    p.add_argument("--at_depth", type=int, help="... of a run at this depth")
    a = p.parse_args(argv)
    if a.max_train_minutes:
        if not (a.tokens_per_second and a.at_depth):
            p.error("--max_train_minutes needs --tokens_per_second and --at_depth: a throughput measured on this machine")
        best = fitting_depth(a.max_train_minutes, a.tokens_per_second, a.at_depth)
        hours = derive(best)["tokens"] * flops_per_token(best) / (a.tokens_per_second * flops_per_token(a.at_depth)) / 60
        print(f"depth {best}: its horizon of {derive(best)['tokens'] / 1e6:.1f}M tokens takes ~{hours:.1f} minutes of the "
              f"{a.max_train_minutes:g} minutes (estimated from {a.tokens_per_second:g} tokens/s at depth {a.at_depth} "
              f"and FLOPs per token); train it with --depth {best} --max_train_minutes {a.max_train_minutes:g}")
        return
    print("| depth | hidden | heads | params (body) | vocab | block | batch tokens | lr | horizon tokens | steps |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for depth in a.depths:
        d = derive(depth)
        s, o = d["shape"], d["options"]
        print(f"| {depth} | {s['hidden_size']} | {s['num_attention_heads']} | {d['params'] / 1e6:.2f}M ({d['body_params'] / 1e6:.2f}M) "
              f"| {o['tokenizer_vocab_size']} | {o['block_size']} | {o['global_batch_tokens']:,} | {o['learning_rate']:g} "
              f"| {d['tokens'] / 1e6:.1f}M | {o['max_steps']:,} |")


if __name__ == "__main__":
    main(sys.argv[1:])
