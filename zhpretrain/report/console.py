"""The console: one compact line per Trainer log and every message written above the progress bar, and the same lines
appended to output_dir/train.log."""
import datetime
import logging
from pathlib import Path

from tqdm.auto import tqdm
from transformers import PrinterCallback, ProgressCallback

from ..train.clock import duration

_log_file: Path | None = None  # train.log of this run, on the main process only


def write(line: str) -> None:
    """Print a line above any progress bar (tqdm.write moves the bar down instead of writing through it); log it."""
    tqdm.write(line)
    if _log_file is not None:
        with open(_log_file, "a", encoding="utf-8") as f:  # opened per line: a killed run loses nothing, a resume appends
            f.write(line + "\n")


def format_log(logs: dict, step: int, max_steps: int, eta: float | None = None) -> str:
    """The Trainer's log dict as one readable line: numbers formatted as numbers, the bookkeeping keys left out."""
    if "eval_loss" in logs:
        parts = [f"eval  step {step}", f"loss {logs['eval_loss']:.4f}"]
        if "eval_perplexity" in logs:
            parts.append(f"ppl {logs['eval_perplexity']:.2f}")
        if "eval_bits_per_byte" in logs:
            parts.append(f"bits/byte {logs['eval_bits_per_byte']:.4f}")
        if "eval_samples" in logs:  # during training a subset (eval_subset_samples), after it the whole split
            parts.append(f"{logs['eval_samples']:,} blocks")
        if "eval_runtime" in logs:
            parts.append(f"{logs['eval_runtime']:.1f}s")
        return " | ".join(parts)
    if "train_runtime" in logs:  # the summary the Trainer logs when train() returns
        parts = [f"train done at step {step}", f"{duration(logs['train_runtime'], hours=True)}"]
        if "train_loss" in logs:
            parts.append(f"mean loss {logs['train_loss']:.4f}")
        return " | ".join(parts)
    parts = [f"step {step}/{max_steps}" if max_steps > 0 else f"step {step}"]
    known = {"loss": "loss {:.4f}", "learning_rate": "lr {:.2e}", "grad_norm": "grad {:.3g}", "tokens_per_second": "{:,.0f} tok/s",
             "mfu": "MFU {:.1%}"}
    parts += [fmt.format(logs[k]) for k, fmt in known.items() if isinstance(logs.get(k), (int, float))]
    skip = set(known) | {"epoch", "step", "tokens_seen", "total_flos"}
    parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in logs.items() if k not in skip]
    if eta is not None:
        parts.append(f"ETA {duration(eta, hours=True)}")
    return " | ".join(parts)


class ConsoleProgress(ProgressCallback):
    """The Trainer's progress bar, with its raw `{'loss': '6.123', ...}` log lines replaced by format_log's."""

    def __init__(self, clock, bar: bool = True):
        super().__init__()
        self.clock, self.bar = clock, bar  # bar False with --disable_tqdm: lines only

    def on_train_begin(self, args, state, control, **kwargs):
        if self.bar:
            super().on_train_begin(args, state, control, **kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar:
            if self.training_bar is not None and self.training_bar.total != state.max_steps:
                self.training_bar.total = state.max_steps  # a time budget moves the end (budget.py)
            super().on_step_end(args, state, control, **kwargs)

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if self.bar:
            super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar and self.training_bar is not None:
            super().on_train_end(args, state, control, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            eta = self.clock.eta(state.global_step, state.max_steps) if "loss" in logs else None
            write(format_log(logs, state.global_step, state.max_steps, eta))


class TiedHeadFilter(logging.Filter):
    """Drops the Trainer's warning that a resumed checkpoint lacks the output layer when that layer is the input
    embedding itself (tied): it is saved once, under the embedding's name, and loading the embedding loads it."""

    def __init__(self, model):
        super().__init__()
        output, embedding = model.get_output_embeddings(), model.get_input_embeddings()
        tied = output is not None and output.weight is embedding.weight
        names = [f"{n}.weight" for n, m in model.named_modules() if m is output] if tied else []
        self.message = f"There were missing keys in the checkpoint model loaded: {names}." if names else None

    def filter(self, record: logging.LogRecord) -> bool:
        return self.message is None or record.getMessage() != self.message


def attach(trainer, output_dir: Path, main_process: bool) -> None:
    """Swap the Trainer's progress (or printer) callback for ConsoleProgress, and start train.log on the main process;
    silence the Trainer's false alarm about a tied output layer on resume."""
    global _log_file
    logging.getLogger("transformers.trainer").addFilter(TiedHeadFilter(trainer.model))
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(ConsoleProgress(trainer.clock, bar=not trainer.args.disable_tqdm))
    _log_file = Path(output_dir) / "train.log" if main_process else None
    if main_process:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        with open(_log_file, "a", encoding="utf-8") as f:
            f.write(f"--- {stamp}: training in {output_dir} ---\n")
