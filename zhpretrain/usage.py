"""What the command line says back: the short --help, and one line for a value of the wrong type."""
import argparse
import dataclasses
import re
import textwrap
from pathlib import Path

USAGE = "python pretrain.py [configs/PRESET.yaml] [--option value ...]"

# The options people change, with help written for this project (the full list, with the Trainer's own texts, is
# --help-all). Options without a text here use the field's own help.
COMMON = {
    "output_dir": "Run folder: checkpoints, final/, train.log, data_stats.json. Re-running the same command resumes there.",
    "train_file": None,
    "validation_file": None,
    "block_size": None,
    "max_steps": "Optimizer steps to train (overrides num_train_epochs when > 0).",
    "num_train_epochs": "Passes over the training blocks (when max_steps is not set).",
    "max_train_minutes": None,
    "global_batch_tokens": None,
    "per_device_train_batch_size": "Sequences per device per micro-batch.",
    "gradient_accumulation_steps": "Micro-batches per optimizer step (global batch = per device x this x processes).",
    "learning_rate": "Peak learning rate (after warmup).",
    "eval_steps": "Steps between evaluations; each also logs generated samples.",
    "save_steps": "Steps between checkpoints.",
    "model_config": None,
    "config_overrides": None,
    "tokenizer_name_or_path": None,
    "streaming": None,
    "swanlab_mode": None,
    "cache_dir": None,
}
# The types of the Trainer's options above, as HfArgumentParser parses them: the short --help is printed before
# transformers is imported (that import takes seconds), so it cannot ask TrainingArguments (tests/test_console.py
# checks these against the real parser).
TRAINER_KINDS = {"output_dir": "str", "max_steps": "int", "num_train_epochs": "float", "per_device_train_batch_size": "int",
                 "gradient_accumulation_steps": "int", "learning_rate": "float", "eval_steps": "float", "save_steps": "float"}


def _kind(annotation) -> str:
    """int, float, bool or str: what the option's value parses as (`int | None` parses as int)."""
    names = re.findall(r"\b(int|float|bool|str)\b", str(getattr(annotation, "__name__", None) or annotation))
    return names[0] if names else "str"


def _presets(configs: Path) -> list[str]:
    """Each shipped preset with the first sentence of its header comment."""
    lines = []
    for path in sorted(configs.glob("*.yaml")):
        header = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            header.append(line.lstrip("# "))
        about = " ".join(header).split(": ", 1)[-1].split(". ")[0].rstrip(".")
        lines.append(textwrap.fill(about, 110, initial_indent=f"  configs/{path.name:<15} ", subsequent_indent=" " * 26))
    return lines


def short_help(own_classes: tuple, configs: Path) -> str:
    """The usage line, the shipped presets, and the common options with their type and help."""
    fields = {f.name: f for cls in own_classes for f in dataclasses.fields(cls)}
    out = [f"usage: {USAGE}", "",
           "Pretrain a small GPT-style Chinese language model from scratch. Without a preset: the tutorial preset when",
           "data/wikipedia-zh-cn-20240820.json exists, else the demo. Every option overrides the preset's value.", "",
           "presets:", *_presets(configs), "", "common options (python pretrain.py --help-all lists every option):"]
    for name, text in COMMON.items():
        kind = TRAINER_KINDS[name] if name in TRAINER_KINDS else _kind(fields[name].type)
        out.append(f"  --{name} {kind.upper()}")
        out.append(f"      {text or fields[name].metadata.get('help', '')}")
    return "\n".join(out)


def invalid_value(error: argparse.ArgumentError, argv: list[str], preset: Path) -> str:
    """argparse's type error as one sentence: the option, the expected type, the value, and where the value came from."""
    option = (error.argument_name or "an option").split("/")[0]
    source = "" if any(a.split("=")[0] == option for a in argv) else f" (from {preset})"
    match = re.match(r"invalid (\S+) value: (.*)", error.message) or re.match(r"Truthy value (expected): got (\S+)", error.message)
    if not match:  # e.g. "invalid choice: 'x' (choose from ...)", "expected one argument"
        return f"{option}: {error.message.rstrip('.')}{source}."
    kind = {"int": "an integer", "float": "a number", "expected": "true or false"}.get(match.group(1), match.group(1))
    return f"{option} expects {kind}, not {match.group(2)}{source}."
