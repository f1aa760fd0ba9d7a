"""Pictures of a run folder (loss, bits per byte, learning rate) and of a trained model (attention map, RoPE).

    python -m zhpretrain.plot runs/demo                     # curves, schedule, attention and RoPE into runs/demo/images/
    python -m zhpretrain.plot runs/demo --swanlog swanlog   # also a screenshot of the run in the local SwanLab dashboard

Curves come from the newest complete checkpoint's trainer_state.json (the Trainer's own log), model pictures from the
run's final/ (or --model, any Hugging Face causal LM folder).
"""
import argparse
import json
import math
import re
import warnings
from pathlib import Path

from .errors import UserError, cli

SENTENCE = "陕西省是中国西北部的一个省，省会是西安。"
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
             "SimHei", "Microsoft YaHei", "PingFang SC", "Heiti SC")
DPI = 110  # small PNGs that still read well in a README


def trainer_state(run_dir) -> Path:
    """The trainer_state.json of a checkpoint folder, or of the newest complete checkpoint of a run folder."""
    run_dir = Path(run_dir)
    if (run_dir / "trainer_state.json").is_file():
        return run_dir / "trainer_state.json"
    steps = sorted(((int(m.group(1)), p) for p in run_dir.glob("checkpoint-*") if (m := re.fullmatch(r"checkpoint-(\d+)", p.name))),
                   reverse=True)
    for _, checkpoint in steps:
        try:  # the Trainer writes trainer_state.json last: a checkpoint without a readable one was interrupted
            json.loads((checkpoint / "trainer_state.json").read_text())
            return checkpoint / "trainer_state.json"
        except (OSError, ValueError):
            continue
    raise UserError(f"'{run_dir}' holds no complete checkpoint (checkpoint-N/trainer_state.json), so there is no training log "
                    "to draw. Pass a run's output_dir (e.g. runs/demo) after it has saved a checkpoint.")


def tokens_per_step(state_path: Path, log: list[dict]) -> int | None:
    shape = state_path.parent / "zhpretrain_shape.json"  # written by our training next to every checkpoint
    if shape.is_file():
        s = json.loads(shape.read_text())
        return s["sequences_per_step"] * s["block_size"]
    return next((h["tokens_seen"] // h["step"] for h in log if h.get("tokens_seen") and h.get("step")), None)


def curves(state_path) -> dict:
    """The series drawn, from a trainer_state.json: x is tokens seen (steps when the run did not record them)."""
    state_path = Path(state_path)
    log = json.loads(state_path.read_text())["log_history"]
    per_step = tokens_per_step(state_path, log)
    x = (lambda step: step * per_step) if per_step else (lambda step: step)  # noqa: E731
    series = lambda key, where=x: [(where(h["step"]), h[key]) for h in log if key in h]  # noqa: E731
    return {"x_label": "tokens seen" if per_step else "optimizer steps", "tokens_per_step": per_step,
            "train_loss": series("loss"), "eval_loss": series("eval_loss"), "eval_bits_per_byte": series("eval_bits_per_byte"),
            "learning_rate": series("learning_rate", where=lambda step: step)}


def _tokens(value, _pos=None) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= size:
            return f"{value / size:g}{unit}"
    return f"{value:g}"


def _line(ax, points, label, **style):
    if points:
        ax.plot(*zip(*points), label=label, **style)


def draw_curves(data: dict, title: str):
    """Loss (train and eval) and eval bits per byte against tokens seen."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(10, 3.8), dpi=DPI, layout="constrained")
    loss, bpb = fig.subplots(1, 2)
    _line(loss, data["train_loss"], "train loss", color="tab:blue", alpha=0.8)
    _line(loss, data["eval_loss"], "eval loss", color="tab:orange", marker="o")
    loss.set(title="loss (nats per token)", ylabel="loss")
    loss.legend()
    _line(bpb, data["eval_bits_per_byte"], "eval bits per byte", color="tab:green", marker="o")
    bpb.set(title="eval bits per UTF-8 byte (lower is better)", ylabel="bits per byte")
    for ax in (loss, bpb):
        ax.set_xlabel(data["x_label"])
        ax.xaxis.set_major_formatter(FuncFormatter(_tokens))
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig


def draw_lr(data: dict, title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.4), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    _line(ax, data["learning_rate"], "learning rate", color="tab:purple", marker=".")
    per_step = f" ({data['tokens_per_step']:,} tokens each)" if data["tokens_per_step"] else ""
    ax.set(title=f"learning-rate schedule: {title}", xlabel=f"optimizer step{per_step}", ylabel="learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.grid(alpha=0.3)
    return fig


def cjk_font() -> str | None:
    """A font family with Chinese glyphs, or None (with a warning: labels would be empty boxes)."""
    from matplotlib import font_manager

    names = {f.name for f in font_manager.fontManager.ttflist}
    found = next((n for n in CJK_FONTS if n in names), None) or next((n for n in sorted(names) if "CJK" in n), None)
    if found is None:
        warnings.warn("No font with Chinese glyphs found, so tokens are labelled by their ids. Install one (Debian/Ubuntu: "
                      "apt-get install fonts-noto-cjk), then delete matplotlib's font cache (~/.cache/matplotlib).", stacklevel=2)
    return found


def attention(model, tok, sentence: str, layer: int = -1):
    """(token labels, attention weights [heads, tokens, tokens]) of one layer, for EOS + the sentence as in training."""
    import torch

    from .model.sampling import prompt_ids

    ids = prompt_ids(tok, sentence)
    spans = tok(sentence, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    # A rare character is split into byte tokens sharing one span: the first shows it, the rest show "·".
    labels = ["<eos>"] + [sentence[a:b] if i == 0 or (a, b) != spans[i - 1] else "·" for i, (a, b) in enumerate(spans)]
    with torch.no_grad():
        out = model(torch.tensor([ids], device=model.device), output_attentions=True)
    return labels, ids, out.attentions[layer][0].float().cpu().numpy()


def draw_attention(labels, ids, weights, layer: int, title: str):
    from matplotlib.figure import Figure

    font = cjk_font()
    labels = labels if font else [str(i) for i in ids]
    heads = weights.shape[0]
    cols = math.ceil(math.sqrt(heads))  # a square grid: panels stay large enough to read in a README
    rows = -(-heads // cols)
    size = 0.2 * len(labels) + 1.1  # inches per panel: room for one tick label per token
    fig = Figure(figsize=(cols * size + 1, rows * (size + 0.4) + 0.4), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for h, ax in enumerate(axes):
        if h >= heads:
            ax.set_visible(False)
            continue
        image = ax.imshow(weights[h], cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"head {h}")
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=9, fontfamily=font or "sans-serif")
        ax.set_yticks(range(len(labels)), labels, fontsize=9, fontfamily=font or "sans-serif")
        ax.set_xlabel("attends to (key)")
        if h % cols == 0:
            ax.set_ylabel("token (query)")
    fig.colorbar(image, ax=axes.tolist(), shrink=0.8, pad=0.01, label="attention weight")
    fig.suptitle(f"{title}: attention of layer {layer} (counting from 0), one panel per head\n"
                 "(causal: a token sees only itself and earlier tokens)")
    return fig


def rope(model, positions: int):
    """(inverse frequencies, cos table [positions, pairs]) from the model's own rotary embedding, or None without RoPE."""
    import torch

    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    if rotary is None:
        return None
    inv_freq = rotary.inv_freq.float().cpu()
    probe = torch.zeros(1, positions, 1)  # only its dtype and device are read
    cos, _ = rotary(probe, torch.arange(positions)[None])
    return inv_freq.numpy(), cos[0, :, :len(inv_freq)].float().cpu().numpy() / rotary.attention_scaling


def draw_rope(inv_freq, cos_table, theta: float, max_positions: int, title: str):
    """The rotation angles by position and pair, and how a rotated query-key dot product fades with distance."""
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.8), dpi=DPI, layout="constrained")
    table, decay = fig.subplots(1, 2, width_ratios=(1.2, 1))
    image = table.imshow(cos_table.T, aspect="auto", cmap="RdBu", vmin=-1, vmax=1, interpolation="nearest")
    table.set(title=f"cos(position × θ_i), θ_i = {theta:g}^(-2i/d)", xlabel="position", ylabel="dimension pair i")
    fig.colorbar(image, ax=table, shrink=0.8)
    # q = k = all ones, rotated by their positions: q·k depends only on the distance, sum over pairs of cos(distance × θ_i).
    distance = np.arange(max_positions)
    dot = np.cos(np.outer(distance, inv_freq)).sum(axis=1) / len(inv_freq)
    decay.plot(distance, dot, color="tab:red", linewidth=1)
    decay.set(title="q·k of two equal vectors vs their distance", xlabel="distance between positions (tokens)",
              ylabel="relative dot product")
    decay.set_xscale("symlog", linthresh=10)
    decay.grid(alpha=0.3)
    fig.suptitle(f"{title}: rotary position embedding ({len(inv_freq)} pairs per head)")
    return fig


def save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    print(f"wrote {path}", flush=True)
    return path


def model_pictures(model_dir, sentence: str = SENTENCE, layer: int = -1, tokenizer: str | None = None) -> dict:
    """{file name: figure} of the model's attention map and RoPE, drawn in memory (nothing is written yet)."""
    from .generate import load

    model, tok = load(model_dir, tokenizer, attn_implementation="eager")  # SDPA does not return attention weights
    title = Path(model_dir).resolve().parent.name + "/" + Path(model_dir).name
    layers = model.config.num_hidden_layers
    layer = layer % layers
    labels, ids, weights = attention(model, tok, sentence, layer)
    figures = {"attention.png": draw_attention(labels, ids, weights, layer, title)}
    positions = getattr(model.config, "max_position_embeddings", None) or 1024
    found = rope(model, min(positions, 256))
    if found is None:
        warnings.warn(f"{model.config.model_type} has no rotary position embedding: no RoPE picture.", stacklevel=1)
        return figures
    theta = (getattr(model.config, "rope_parameters", None) or {}).get("rope_theta", float("nan"))
    figures["rope.png"] = draw_rope(*found, theta, positions, title)
    return figures


def run_name(run_dir) -> str:
    """The run's output_dir name (SwanLab's default experiment name), also when given one of its checkpoints."""
    return run_folder(run_dir).name


def run_folder(run_dir) -> Path:
    """The run's output_dir, also when given its final/ or one of its checkpoints."""
    run_dir = Path(run_dir).resolve()
    return run_dir.parent if re.fullmatch(r"checkpoint-\d+|final", run_dir.name) else run_dir


def run_pictures(run_dir) -> dict:
    """{file name: figure} of the training curves and the learning rate, drawn in memory."""
    path = trainer_state(run_dir)
    data = curves(path)
    if not data["train_loss"] and not data["eval_loss"]:
        raise UserError(f"{path} has no loss in its log_history: nothing to draw.")
    title = f"{run_name(run_dir)} (from {path.parent.name})"
    return {"curves.png": draw_curves(data, title), "lr_schedule.png": draw_lr(data, title)}


def check_out(out: Path) -> None:
    """--out must be a folder or not exist yet, with no file on the way to it."""
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                raise UserError(f"--out '{out}' cannot be a folder of pictures: '{folder}' is a file. Pass a folder "
                                "(it is created if needed; files of the same names in it are replaced).")
            return


def check_dashboard(swanlog) -> None:
    """What the screenshot needs, before anything is written: the swanlog database, swanlab's dashboard, a Chromium."""
    import importlib.util

    from .dashboard import BROWSERS, browser

    if not (Path(swanlog) / "runs.swanlab").is_file():
        raise UserError(f"--swanlog '{swanlog}' holds no SwanLab dashboard database (runs.swanlab): it is not the log folder of "
                        "a run in local mode. Pass the run's --swanlab_log_dir (default: swanlog); nothing was written.")
    if importlib.util.find_spec("swanboard") is None:
        raise UserError("--swanlog needs the local SwanLab dashboard: pip install 'swanlab[dashboard]'. Nothing was written.")
    if browser() is None:
        raise UserError("--swanlog needs a Chromium for the screenshot (looked for " + ", ".join(BROWSERS) + "). "
                        "Debian/Ubuntu: apt-get install chromium fonts-noto-cjk. Nothing was written.")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m zhpretrain.plot", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a run's output_dir (curves from its newest checkpoint, model pictures from final/), "
                                   "a checkpoint-N/ folder, or any causal LM folder (model pictures only)")
    p.add_argument("--out", help="folder the PNG files are written to (default: the run folder's images/)")
    p.add_argument("--model", help="model folder for the attention and RoPE pictures (default: RUN_DIR/final)")
    p.add_argument("--tokenizer", help="tokenizer folder, when the model folder has none")
    p.add_argument("--sentence", default=SENTENCE, help="the sentence whose attention is drawn")
    p.add_argument("--layer", type=int, default=-1, help="which layer's heads to draw (default: the last)")
    p.add_argument("--swanlog", help="also screenshot this run in the local SwanLab dashboard of this log folder")
    p.add_argument("--experiment", help="SwanLab experiment name for the screenshot (default: the run folder's name)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"'{run_dir}' is not a folder. Pass a run's output_dir (e.g. runs/demo) or a model folder.")
    # The run's own folder by default: never the repository's pictures, nor a model folder that may be published.
    out = Path(args.out) if args.out else run_folder(run_dir) / "images"
    check_out(out)
    if args.swanlog:
        check_dashboard(args.swanlog)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("The pictures need matplotlib: pip install matplotlib. Nothing was written.") from None
    # Everything is drawn before anything is written: a failure leaves no half set of pictures.
    model_dir = Path(args.model) if args.model else next((d for d in (run_dir, run_dir / "final") if (d / "config.json").is_file()), None)
    has_log = any(run_dir.glob("checkpoint-*")) or (run_dir / "trainer_state.json").is_file()
    figures = run_pictures(run_dir) if has_log or model_dir is None else {}
    if model_dir is not None:
        figures.update(model_pictures(model_dir, args.sentence, args.layer, args.tokenizer))
    out.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        save(fig, out / name)
    if args.swanlog:
        from .dashboard import screenshot

        screenshot(args.swanlog, out / "dashboard.png", args.experiment or run_name(run_dir))
    return 0


if __name__ == "__main__":
    cli(main)
