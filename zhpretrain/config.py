"""The argument dataclasses, YAML presets and command-line overrides."""
import argparse
import dataclasses
import difflib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments

from . import usage
from .errors import UserError

REPO = Path(__file__).resolve().parent.parent
WIKI_FILE = "data/wikipedia-zh-cn-20240820.json"
WIKI_PRESET = REPO / "configs" / "tutorial.yaml"
DEMO_PRESET = REPO / "configs" / "demo.yaml"


@dataclass
class DataArguments:
    train_file: str | None = field(default=WIKI_FILE, metadata={"help": "Path, directory or glob of .jsonl/.json/.parquet/.txt files."})
    validation_file: str | None = field(default=None, metadata={"help": "Held-out files; when set, replaces the train/test split."})
    dataset_name: str | None = field(default=None, metadata={"help": "A hub dataset id, replacing train_file: ORG/NAME (Hugging Face, streamed) or modelscope:ORG/NAME (downloaded to its cache, then read as files)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The hub dataset's configuration name."})
    text_column: str | None = field(default=None, metadata={"help": "Column holding the text; default: the first of text, completion, content."})
    validation_split_percentage: float = field(default=1.0, metadata={"help": "Percent of documents held out for evaluation."})
    validation_split_documents: int | None = field(default=None, metadata={"help": "Hold out this many documents instead of a percentage."})
    split_seed: int = field(default=42, metadata={"help": "Seed of the train/test split."})
    block_size: int = field(default=512, metadata={"help": "Tokens per training block."})
    streaming: bool = field(default=False, metadata={"help": "Read, tokenize and pack the training files on the fly instead of caching blocks first."})
    document_attention: bool = field(default=False, metadata={"help": "Each token attends only to its own document inside a packed block (positions restart at each EOS); false: attention crosses the EOS between documents."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on at most this many blocks (streaming: default 256)."})
    skip_bad_records: bool = field(default=False, metadata={"help": "Skip malformed records (and count them) instead of stopping."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where tokenizers and token blocks are cached (default ~/.cache/zhpretrain)."})

    def cache_root(self) -> Path:
        return Path(self.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "zhpretrain"))


@dataclass
class ModelArguments:
    model_config: str = field(default="configs/models/qwen2-tutorial.json", metadata={"help": "A Hugging Face config.json (file or folder) giving the model's shape."})
    config_overrides: str | None = field(default=None, metadata={"help": "Comma-separated key=value pairs applied to the config, e.g. 'num_hidden_layers=6,hidden_size=384'."})
    init_from: str | None = field(default=None, metadata={"help": "Continue pretraining a causal LM: a folder (e.g. a run's final/), ORG/NAME (Hugging Face) or modelscope:ORG/NAME; its weights, shape and tokenizer replace model_config and the BPE."})
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "A tokenizer folder, ORG/NAME (Hugging Face), modelscope:ORG/NAME, or qwen2 (Qwen2's tokenizer, offline); default: train a byte-level BPE."})
    tokenizer_vocab_size: int = field(default=32000, metadata={"help": "Vocabulary size of the BPE trained when no tokenizer is given."})
    tokenizer_train_max_chars: int = field(default=3_000_000, metadata={"help": "Characters of training text the BPE is trained on, at most (peak memory grows ~0.23 GB per million)."})
    tokenizer_train_sample: Literal["head", "spread"] = field(default="head", metadata={"help": "Which training documents the BPE learns from: head = the first ones, up to tokenizer_train_max_chars; spread = documents at an even stride over the whole training split (one streaming pass)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow configs/tokenizers that run code from their folder."})


@dataclass
class RunArguments:
    swanlab_mode: str | None = field(default=None, metadata={"help": "cloud, local, offline or disabled; default: $SWANLAB_MODE, else cloud when logged in, else local."})
    swanlab_project: str = field(default="zhpretrain", metadata={"help": "SwanLab project name."})
    swanlab_experiment_name: str | None = field(default=None, metadata={"help": "SwanLab experiment name (default: the output_dir's name)."})
    swanlab_log_dir: str = field(default="swanlog", metadata={"help": "Folder for SwanLab's local and offline logs."})
    sample_prompts: list[str] = field(default_factory=lambda: ["陕西省是", "中国的首都", "数学是"], metadata={"help": "Prompts continued at each evaluation and logged as text."})
    prompt: str = field(default="陕西省是", metadata={"help": "Prompt continued once training ends."})
    max_new_tokens: int = field(default=48, metadata={"help": "Tokens generated per sample."})
    allow_resume_changes: bool = field(default=False, metadata={"help": "Resume a checkpoint although the data or the training hyper-parameters changed since it was started (its tokenizer and model shape are kept)."})
    allow_existing_output_dir: bool = field(default=False, metadata={"help": "Write into an existing non-empty output_dir that is not a run folder of this project."})
    nproc_per_node: str = field(default="auto", metadata={"help": "Processes on this node: auto = one per visible GPU (python pretrain.py re-launches itself under torchrun when there are several), or a number (on a CPU: gloo processes). Ignored under torchrun or accelerate launch."})
    peak_tflops: float | None = field(default=None, metadata={"help": "Peak TFLOPS of one device for the MFU figure; default: the GPU datasheet table in zhpretrain/speed.py, or a measured matmul on CPU."})
    muon_learning_rate: float | None = field(default=None, metadata={"help": "Train the hidden weight matrices with Muon at this peak learning rate (on AdamW's scale: start from --learning_rate), the rest (embeddings, output layer, norms, biases) with --optim at --learning_rate; same schedule for both. Default: off, --optim for everything."})
    push_to_modelscope: str | None = field(default=None, metadata={"help": "After saving, upload final/ (with its model card) to this ModelScope model ORG/NAME."})
    max_train_minutes: float | None = field(default=None, metadata={"help": "Wall-clock budget of training time in minutes (evaluation, saving and data preparation not counted): training ends inside it with the learning rate decayed (warmup-stable-decay); max_steps stays an upper bound."})
    budget_decay_ratio: float = field(default=0.2, metadata={"help": "With max_train_minutes: the share of the budget (by time) over which the learning rate decays (1-sqrt), at the end."})
    global_batch_tokens: int | None = field(default=None, metadata={"help": "Tokens per optimizer step over all processes. When set, gradient_accumulation_steps (and, if needed, a smaller per_device_train_batch_size) is derived from it and the number of processes, so a preset trains the same schedule on 1, 2, 8 or 16 GPUs. Default: per device x accumulation x processes."})
    budget_min_lr_ratio: float = field(default=0.0, metadata={"help": "With max_train_minutes: the learning rate the decay ends at, as a fraction of learning_rate."})

    def __post_init__(self):
        from .train.budget import check_options

        check_options(self)  # a ValueError here becomes one 'Invalid arguments' line


ARGUMENT_CLASSES = (DataArguments, ModelArguments, RunArguments, TrainingArguments)


def _closest(name: str, valid) -> str:
    match = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""


def resolve_path(path: str | None) -> str | None:
    """A relative path not found from here is looked up in the repo, so the shipped presets work from any folder."""
    if not path or os.path.isabs(path) or os.path.exists(path) or any(c in path for c in "*?["):
        return path
    candidate = REPO / path
    return str(candidate) if candidate.exists() else path


def _choose_preset(argv: list[str]) -> tuple[Path, list[str], str | None]:
    """The first argument may name a YAML preset; otherwise the wiki preset if its corpus is here, else the demo
    (with a note, printed once the arguments parsed, so a bad option's error stays one line)."""
    if argv and argv[0].endswith((".yaml", ".yml")):
        path = Path(argv[0])
        if not path.is_file():
            raise UserError(f"Preset file {path} does not exist. The presets shipped are in {REPO / 'configs'}.")
        return path, argv[1:], None
    if Path(resolve_path(WIKI_FILE)).is_file():
        return WIKI_PRESET, argv, None
    if not any(a.split("=")[0] in ("--train_file", "--dataset_name") for a in argv):
        return DEMO_PRESET, argv, (
            f"{WIKI_FILE} not found, so running the demo preset on the small demo corpus. For the real run, download "
            "wikipedia-zh-cn-20240820.json (Hugging Face: fjcanyue/wikipedia-zh-cn; or ModelScope) into data/, "
            "or pass --train_file PATH.")
    return DEMO_PRESET, argv, None


def load_preset(path: Path, valid: set[str]) -> dict:
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"Preset {path} is not valid YAML: {e}. Fix the file and run again.") from None
    if not isinstance(values, dict):
        raise UserError(f"Preset {path} must be a mapping of option: value, not a {type(values).__name__}.")
    for key in values:
        if key not in valid:
            raise UserError(f"Preset {path} has an unknown key '{key}'.{_closest(key, valid)} Run python pretrain.py --help for every option.")
    return values


def precision(bf16: bool, fp16: bool) -> tuple[bool, bool]:
    """(bf16, fp16) this device really runs: bf16 only where the GPU has it natively (torch's is_bf16_supported() also
    counts emulation, which is slower than fp32), fp16 with loss scaling on a GPU without it, fp32 on a CPU. Printed once."""
    if not (bf16 or fp16):
        return False, False
    if not torch.cuda.is_available():
        choice, why = (False, False), "no GPU: training in fp32"
    elif bf16 and torch.cuda.is_bf16_supported(including_emulation=False):
        return True, False
    elif bf16:
        choice, why = (False, True), f"{torch.cuda.get_device_name()} has no native bf16: training in fp16 with loss scaling"
    else:
        return False, True
    if os.environ.get("RANK", "0") == "0":
        print(f"precision: {why}", flush=True)
    return choice


def parse_args(argv: list[str] | None = None):
    """Return (data, model, run, training) arguments from an optional YAML preset plus command-line overrides."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # exit_on_error=False: a bad value raises, and becomes one line below instead of argparse's 129-line usage.
    parser = HfArgumentParser(ARGUMENT_CLASSES, allow_abbrev=False, exit_on_error=False, usage=usage.USAGE)
    valid = {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls) if f.init}
    if "--help-all" in argv:
        parser.print_help()
        raise SystemExit(0)
    if "-h" in argv or "--help" in argv:
        print(usage.short_help(parser, REPO / "configs"))
        raise SystemExit(0)
    preset, argv, note = _choose_preset(argv)
    defaults = load_preset(preset, valid)
    for action in parser._actions:  # YAML gives typed values; argparse type-checks only string defaults
        if action.dest in defaults and defaults[action.dest] is not None:
            value = defaults[action.dest]
            if action.nargs in ("+", "*"):
                defaults[action.dest] = [str(v) for v in (value if isinstance(value, list) else [value])]
            elif isinstance(value, (bool, int, float, str)):
                defaults[action.dest] = str(value)
    parser.set_defaults(**defaults)
    try:
        namespace, rest = parser.parse_known_args(argv)
    except argparse.ArgumentError as e:
        raise UserError(usage.invalid_value(e, argv, preset)) from None
    if rest:
        unknown = next((a for a in rest if a.startswith("--")), rest[0])
        hint = _closest(unknown.lstrip("-").split("=")[0], valid).replace("'", "'--", 1)
        raise UserError(f"Unknown option '{unknown}'.{hint} Run python pretrain.py --help for every option.")
    if note:
        print(note, flush=True)
    namespace.bf16, namespace.fp16 = precision(namespace.bf16, namespace.fp16)
    if namespace.tf32 is None and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8:
        namespace.tf32 = True  # Ampere and newer: fp32 matmuls (the parts autocast keeps in fp32) on tensor cores
    if not (torch.cuda.is_available() or torch.backends.mps.is_available()):
        namespace.use_cpu = True  # without it, TrainingArguments ignores torchrun's process group on a CPU-only machine
    try:
        data, model, run, training = (cls(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls) if f.init})
                                      for cls in ARGUMENT_CLASSES)
    except ValueError as e:
        raise UserError(f"Invalid arguments: {e}") from None
    data.train_file, data.validation_file = resolve_path(data.train_file), resolve_path(data.validation_file) or None
    model.model_config = resolve_path(model.model_config)
    if not (data.validation_file or data.validation_split_documents) and not 0 < data.validation_split_percentage < 100:
        raise UserError(f"validation_split_percentage must be between 0 and 100, not {data.validation_split_percentage}.")
    if data.streaming and training.max_steps <= 0:
        raise UserError("streaming: true needs --max_steps (a stream has no length, so epochs cannot be counted).")
    if run.swanlab_mode and run.swanlab_mode.lower() not in ("cloud", "online", "local", "offline", "disabled"):
        raise UserError(f"swanlab_mode '{run.swanlab_mode}' is not one of cloud, local, offline, disabled.")
    return preset, data, model, run, training
