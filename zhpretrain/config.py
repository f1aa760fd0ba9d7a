"""The argument dataclasses, YAML presets and command-line overrides."""
import argparse
import dataclasses
import difflib
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import yaml

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
    shuffle_buffer_size: int = field(default=10_000, metadata={"help": "Streaming: shuffle this rank's training documents within consecutive windows of this many (the dump is ordered by page id), seeded by split_seed; memory is this x the average document: at 10000, about 13 MB of text per rank for zhwiki (1.1-1.3 KB a document), and a resume re-reads one window; 0 keeps file order."})
    document_attention: bool = field(default=False, metadata={"help": "Each token attends only to its own document inside a packed block (positions restart at each EOS); false: attention crosses the EOS between documents."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on at most this many blocks (streaming: default 256)."})
    eval_subset_samples: int = field(default=256, metadata={"help": "Evaluations during training use the first this many blocks of the evaluation split; the evaluation after training uses all of it (up to max_eval_samples); 0: all of it every time."})
    skip_bad_records: bool = field(default=False, metadata={"help": "Skip malformed records (and count them) instead of stopping."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where tokenizers and token blocks are cached (default ~/.cache/zhpretrain)."})

    def cache_root(self) -> Path:
        return Path(self.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "zhpretrain"))


@dataclass
class ModelArguments:
    depth: int | None = field(default=None, metadata={"help": "The one dial (zhpretrain/scale.py, docs/recipe.md): the number of layers (0: off), from which the shape (hidden 32 x depth), vocabulary, block_size, global_batch_tokens, horizon (max_steps), learning rates, warmup and decay are derived; any of them given explicitly wins. Table: python -m zhpretrain.scale."})
    model_config: str = field(default="configs/models/qwen2-tutorial.json", metadata={"help": "A Hugging Face config.json (file or folder) giving the model's shape."})
    config_overrides: str | None = field(default=None, metadata={"help": "Comma-separated key=value pairs applied to the config, e.g. 'num_hidden_layers=6,hidden_size=384'."})
    init_from: str | None = field(default=None, metadata={"help": "Continue pretraining a causal LM: a folder (e.g. a run's final/), ORG/NAME (Hugging Face) or modelscope:ORG/NAME; its weights, shape and tokenizer replace model_config and the BPE."})
    zero_init_residual: bool = field(default=False, metadata={"help": "Start the layers that write into the residual stream (attention's and the MLP's output projections: o_proj, down_proj; GPT-2's c_proj) at zero, so each block starts as the identity (torchvision's zero_init_residual; modded-nanogpt, nanochat). A random init only. Not on the dial: it won 0.023 / 0.007 / 0.001 bits/byte at depth 2 / 3 / 4 (docs/recipe.md)."})
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "A tokenizer folder, ORG/NAME (Hugging Face), modelscope:ORG/NAME, or qwen2 (Qwen2's tokenizer, offline); default: train a byte-level BPE."})
    tokenizer_vocab_size: int = field(default=32000, metadata={"help": "Vocabulary size of the BPE trained when no tokenizer is given."})
    tokenizer_train_max_chars: int = field(default=10_000_000, metadata={"help": "Characters of training text the BPE is trained on, at most (32k tokens, spread: peak 1.4 GB at 10 M, 2.0 GB at 19 M; Han runs are cut at pairs too rare to merge, so it grows ~0.07 GB per million; see docs/tokenizer.md)."})
    tokenizer_train_sample: Literal["head", "spread"] = field(default="spread", metadata={"help": "Which training documents the BPE learns from: head = the first ones, up to tokenizer_train_max_chars; spread = documents at an even stride over the whole training split (one streaming pass)."})
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
    peak_tflops: float | None = field(default=None, metadata={"help": "Peak TFLOPS of one device for the MFU figure; default: the GPU datasheet table in zhpretrain/train/speed.py; on a CPU none (no MFU is logged), since a matmul timed at start-up measures the load of that moment."})
    muon_learning_rate: float | None = field(default=None, metadata={"help": "Train the hidden weight matrices with Muon at this peak learning rate (on AdamW's scale: start from --learning_rate), the rest (embeddings, output layer, norms, biases) with --optim at --learning_rate; same schedule for both. Default: off, --optim for everything."})
    embedding_learning_rate: float | None = field(default=None, metadata={"help": "With --muon_learning_rate: the peak learning rate of the token embedding table (tied to the output layer, the output layer too: one matrix), on AdamW, same schedule. Default: --learning_rate; not on the dial: 10 x won at depth 2 and lost at depth 4 (docs/recipe.md)."})
    push_to_modelscope: str | None = field(default=None, metadata={"help": "After saving, upload final/ (with its model card) to this ModelScope model ORG/NAME."})
    max_train_minutes: float | None = field(default=None, metadata={"help": "Wall-clock budget of training time in minutes (evaluation, saving and data preparation not counted): training ends inside it with the learning rate decayed (warmup-stable-decay); max_steps stays an upper bound."})
    budget_decay_ratio: float = field(default=0.2, metadata={"help": "With max_train_minutes: the share of the budget (by time) over which the learning rate decays (1-sqrt), at the end."})
    global_batch_tokens: int | None = field(default=None, metadata={"help": "Tokens per optimizer step over all processes. When set, gradient_accumulation_steps (and, if needed, a smaller per_device_train_batch_size) is derived from it and the number of processes, so a preset trains the same schedule on 1, 2, 8 or 16 GPUs. Default: per device x accumulation x processes."})
    budget_min_lr_ratio: float = field(default=0.0, metadata={"help": "With max_train_minutes: the learning rate the decay ends at, as a fraction of learning_rate."})


OWN_CLASSES = (DataArguments, ModelArguments, RunArguments)


def argument_classes() -> tuple:
    """Ours and the Trainer's: imported only once parsing needs them (importing transformers takes seconds, --help none)."""
    from transformers import TrainingArguments

    return (*OWN_CLASSES, TrainingArguments)


@dataclass(frozen=True)
class Range:
    """The values a number may take: low..high, each end included unless *_open; `also`: values allowed outside (such
    as max_steps -1, "not set"); `when`: the options it applies under (None: always); `why`: said with the refusal."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    also: tuple = ()
    when: Callable | None = None
    why: str = ""

    def holds(self, v) -> bool:
        if v in self.also:
            return True
        if isinstance(v, float) and not math.isfinite(v):
            return False
        return not ((self.low is not None and (v < self.low or (self.low_open and v == self.low)))
                    or (self.high is not None and (v > self.high or (self.high_open and v == self.high))))

    def words(self) -> str:
        if self.low is not None and self.high is not None:
            bounds = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        elif self.low is not None:
            bounds = f"{'above' if self.low_open else 'at least'} {self.low:g}"
        else:
            bounds = f"{'below' if self.high_open else 'at most'} {self.high:g}"
        also = "".join(f"{a} or " for a in self.also)
        return f"{also}{bounds}" + (f" ({self.why})" if self.why else "")


def _bpe_trained(a) -> bool:
    return not (a.tokenizer_name_or_path or a.init_from)


BYTE_LEVEL_MINIMUM = 256 + 2  # the byte-level BPE's 256 byte tokens, EOS and PAD (data/tokenizer.py)
ONE, ZERO_UP, ABOVE_ZERO = Range(1), Range(0), Range(0, low_open=True)
FRACTION, BELOW_ONE = Range(0, 1), Range(0, 1, high_open=True)
SEED = Range(0, 2**32 - 1)  # numpy's seeds
# Every number an option or a model shape may take, in one table: options are checked as soon as they are parsed, the
# shape (config.json plus --config_overrides) by model/build.py's check_config; both before any data is read.
OPTION_RANGES = {
    # data
    "block_size": Range(2, why="a block needs a next token to predict"), "validation_split_documents": ONE,
    "validation_split_percentage": Range(0, 100, low_open=True, high_open=True,
                                         when=lambda a: not (a.validation_file or a.validation_split_documents)),
    "max_eval_samples": ONE, "eval_subset_samples": Range(0, why="0: the whole split at every evaluation"),
    "shuffle_buffer_size": ZERO_UP,
    # tokenizer
    "tokenizer_vocab_size": Range(BYTE_LEVEL_MINIMUM, when=_bpe_trained, why="256 byte tokens, EOS and PAD"),
    "tokenizer_train_max_chars": ONE, "depth": Range(0, 64, why="0: no dial, the shape of --model_config as it is"),
    # run
    "max_new_tokens": ONE, "peak_tflops": ABOVE_ZERO, "muon_learning_rate": ABOVE_ZERO, "max_train_minutes": ABOVE_ZERO,
    "embedding_learning_rate": ABOVE_ZERO,
    "budget_decay_ratio": Range(0, 1, low_open=True), "budget_min_lr_ratio": FRACTION,
    # training (TrainingArguments)
    "per_device_train_batch_size": ONE, "per_device_eval_batch_size": ONE, "gradient_accumulation_steps": ONE,
    "eval_accumulation_steps": ONE, "learning_rate": ABOVE_ZERO, "weight_decay": ZERO_UP, "adam_beta1": BELOW_ONE,
    "adam_beta2": BELOW_ONE, "adam_epsilon": ABOVE_ZERO, "max_grad_norm": Range(0, why="0 turns clipping off"),
    "num_train_epochs": Range(0, low_open=True, when=lambda a: a.max_steps <= 0),
    "max_steps": Range(1, also=(-1,), why="-1: train num_train_epochs"), "warmup_steps": Range(0, why="below 1: a share of the steps"),
    "logging_steps": ABOVE_ZERO, "eval_steps": ABOVE_ZERO, "save_steps": ABOVE_ZERO, "eval_delay": ZERO_UP,
    "save_total_limit": ONE, "seed": SEED, "data_seed": SEED, "dataloader_num_workers": ZERO_UP,
    "dataloader_prefetch_factor": ONE, "label_smoothing_factor": BELOW_ONE, "ddp_timeout": ONE, "torch_empty_cache_steps": ONE,
}
SHAPE_RANGES = {
    **dict.fromkeys(("num_hidden_layers", "n_layer", "hidden_size", "n_embd", "num_attention_heads", "n_head",
                     "num_key_value_heads", "intermediate_size", "n_inner", "head_dim", "max_position_embeddings",
                     "n_positions", "vocab_size"), ONE),
    **dict.fromkeys(("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon"), ABOVE_ZERO),
    **dict.fromkeys(("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout"), BELOW_ONE),
    "initializer_range": ZERO_UP,
}


def out_of_range(values, table: dict, name=lambda key: key) -> list[str]:
    """One sentence per value outside its range (None: not set, never checked). values: an object with attributes."""
    problems = []
    for key, rule in table.items():
        value = getattr(values, key, None)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if (rule.when is None or rule.when(values)) and not rule.holds(value):
            problems.append(f"{name(key)} must be {rule.words()}, not {value:g}" if isinstance(value, float) else
                            f"{name(key)} must be {rule.words()}, not {value}")
    return problems


# The oldest versions this code runs on (requirements.txt says the same): torch.cuda.is_bf16_supported(including_emulation=)
# (precision() below) came with torch 2.4; torch.optim.Muon (model/optim.py) with 2.9, so an older torch only refuses
# --muon_learning_rate.
TORCH_FLOOR, MUON_TORCH, TRANSFORMERS_FLOOR = (2, 4), (2, 9), (5, 0)


def _version(text: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", text).groups()
    return int(major), int(minor)


def check_sample_length(model, max_new_tokens: int) -> None:
    """Samples longer than a local model config's positions (with its --config_overrides) are refused here, not at the
    first evaluation after the data is tokenized (sampling.fit would refuse them then)."""
    import json

    if model.init_from or not (model.model_config and Path(model.model_config).is_file()):
        return
    try:
        shape = json.loads(Path(model.model_config).read_text(encoding="utf-8"))
        shape.update(kv.strip().split("=", 1) for kv in (model.config_overrides or "").split(",") if "=" in kv)
        positions = int(shape.get("max_position_embeddings") or shape.get("n_positions") or 0)
    except (ValueError, TypeError, AttributeError):
        return  # a malformed config is build.check_shape's to report, in its own paragraph
    if positions and max_new_tokens > positions - 2:
        raise UserError(f"--max_new_tokens {max_new_tokens} leaves no room for a prompt in the model's {positions:,} positions "
                        f"(max_position_embeddings in {model.model_config}): give at most {positions - 2:,}; nothing was "
                        "read or trained yet.")


def check_versions(namespace) -> None:
    """Refuse, in one paragraph naming the version found and the one needed, what would crash at start-up."""
    import torch
    import transformers

    found = torch.__version__.split("+")[0]
    for name, have, floor in (("torch", found, TORCH_FLOOR), ("transformers", transformers.__version__, TRANSFORMERS_FLOOR)):
        if _version(have) < floor:
            raise UserError(f"This environment has {name} {have}; zhpretrain needs {name} >= {floor[0]}.{floor[1]} "
                            "(requirements.txt). Install a newer one (for torch: the build that matches your CUDA).")
    if namespace.muon_learning_rate is not None and not hasattr(torch.optim, "Muon"):
        raise UserError(f"--muon_learning_rate needs torch.optim.Muon, which torch {found} does not have (it came with torch "
                        f"{MUON_TORCH[0]}.{MUON_TORCH[1]}). Install torch >= {MUON_TORCH[0]}.{MUON_TORCH[1]}, or leave "
                        "--muon_learning_rate unset to train every parameter with --optim.")


def _closest(name: str, valid) -> str:
    match = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""


def resolve_path(path: str | None) -> str | None:
    """A relative path not found from here is looked up in the repo, so the shipped presets work from any folder."""
    if not path or os.path.isabs(path) or os.path.exists(path) or any(c in path for c in "*?["):
        return path
    candidate = REPO / path
    return str(candidate) if candidate.exists() else path


def _preset_positions(argv: list[str], parser: argparse.ArgumentParser) -> list[int]:
    """Where argv names a YAML preset: a .yaml/.yml argument anywhere that is not the value of the option before it
    (an option that takes a value, such as --deepspeed ds.yaml; a true/false option takes none from a file name)."""
    takes_value = {s for a in parser._actions if a.nargs not in (0, "?") for s in a.option_strings}
    return [i for i, a in enumerate(argv) if a.endswith((".yaml", ".yml")) and not a.startswith("-")
            and not (i and argv[i - 1] in takes_value)]


def _choose_preset(argv: list[str], parser: argparse.ArgumentParser) -> tuple[Path, list[str], str | None]:
    """A YAML preset may be named anywhere on the command line; otherwise the wiki preset if its corpus is here, else the
    demo (with a note, printed once the arguments parsed, so a bad option's error stays one line)."""
    if found := _preset_positions(argv, parser):
        if len(found) > 1:
            raise UserError(f"Give one preset, not {len(found)} ({', '.join(argv[i] for i in found)}): the options of a "
                            "preset are overridden on the command line, not by another preset.")
        path = Path(argv[found[0]])
        if not path.is_file():
            raise UserError(f"Preset file {path} does not exist. The presets shipped are in {REPO / 'configs'}.")
        return path, argv[:found[0]] + argv[found[0] + 1:], None
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
    import torch

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
    if ("-h" in argv or "--help" in argv) and "--help-all" not in argv:
        print(usage.short_help(OWN_CLASSES, REPO / "configs"))  # before torch and transformers are imported: at once
        raise SystemExit(0)
    import torch
    from transformers import HfArgumentParser

    classes = argument_classes()
    # exit_on_error=False: a bad value raises, and becomes one line below instead of argparse's 129-line usage.
    parser = HfArgumentParser(classes, allow_abbrev=False, exit_on_error=False, usage=usage.USAGE)
    valid = {f.name for cls in classes for f in dataclasses.fields(cls) if f.init}
    if "--help-all" in argv:
        parser.print_help()
        raise SystemExit(0)
    preset, argv, note = _choose_preset(argv, parser)
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
    def given(key):
        return any(a.split("=")[0] == f"--{key}" for a in argv)
    def named(key):  # where the value came from: the command line or the preset
        return f"--{key}" + ("" if given(key) else f" (from {preset})")
    if problems := out_of_range(namespace, OPTION_RANGES, named):
        raise UserError(f"{'; '.join(problems)}. Fix {'it' if len(problems) == 1 else 'them'} on the command line or in "
                        "the preset; nothing was read or trained yet.")
    dial = None
    # --init_from continues a model as it is (its shape, tokenizer and recipe are the user's): the dial stays off. The
    # dial runs after the range check, on values the user gave; what it derives is in range by its rules.
    if namespace.depth and not namespace.init_from:
        from . import scale

        dial = scale.apply(namespace, lambda key: key in defaults or given(key))
    check_versions(namespace)
    if namespace.embedding_learning_rate is not None and namespace.muon_learning_rate is None:
        raise UserError(f"{named('embedding_learning_rate')} works beside Muon (--muon_learning_rate), whose optimizer this "
                        "project builds with a group for the embedding; without Muon the Trainer's optimizer has one rate "
                        "for every parameter. Give --muon_learning_rate too, or leave --embedding_learning_rate unset.")
    if namespace.zero_init_residual and namespace.init_from:
        raise UserError(f"{named('zero_init_residual')} sets how a random model starts, and --init_from starts from the "
                        f"weights of {namespace.init_from}, so it would do nothing. Leave --zero_init_residual out to continue "
                        "that model, or leave --init_from out to train a new one.")
    if note:
        print(note, flush=True)
    if dial and os.environ.get("RANK", "0") == "0":
        print(dial, flush=True)
    namespace.bf16, namespace.fp16 = precision(namespace.bf16, namespace.fp16)
    if namespace.tf32 is None and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8:
        namespace.tf32 = True  # Ampere and newer: fp32 matmuls (the parts autocast keeps in fp32) on tensor cores
    if not (torch.cuda.is_available() or torch.backends.mps.is_available()):
        namespace.use_cpu = True  # without it, TrainingArguments ignores torchrun's process group on a CPU-only machine
    try:
        data, model, run, training = (cls(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls) if f.init})
                                      for cls in classes)
    except ValueError as e:
        raise UserError(f"Invalid arguments: {e}") from None
    data.train_file, data.validation_file = resolve_path(data.train_file), resolve_path(data.validation_file) or None
    model.model_config = resolve_path(model.model_config)
    check_sample_length(model, run.max_new_tokens)
    if data.streaming and training.max_steps <= 0:
        raise UserError("streaming: true needs --max_steps (a stream has no length, so epochs cannot be counted).")
    if run.swanlab_mode and run.swanlab_mode.lower() not in ("cloud", "online", "local", "offline", "disabled"):
        raise UserError(f"swanlab_mode '{run.swanlab_mode}' is not one of cloud, local, offline, disabled.")
    return preset, data, model, run, training
