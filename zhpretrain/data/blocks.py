"""Concatenate documents with EOS between them, cut them into fixed-length blocks, count them, and cache them on disk."""
import hashlib
import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from . import cache

BATCH_DOCS = 512  # documents per tokenizer call: large enough for the Rust tokenizer to use every core
BATCH_CHARS = 1 << 22  # ... and at most this many characters, so one call stays short (Ctrl-C) and small (memory)
PIECE_CHARS = 1 << 16  # documents longer than this are tokenized in pieces
SPLITS = ("train", "test")


class Blocks(torch.utils.data.Dataset):
    """Block i of a flat, memory-mapped token file: input_ids and labels (the model shifts the labels itself)."""

    def __init__(self, path: Path, dtype: str, block_size: int):
        self.tokens = np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.zeros(0, dtype)
        self.block_size = block_size

    def __len__(self) -> int:
        return len(self.tokens) // self.block_size

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        ids = torch.from_numpy(self.tokens[i * self.block_size:(i + 1) * self.block_size].astype(np.int64))
        return {"input_ids": ids, "labels": ids}


def _pieces(text: str):
    """A document cut into pieces of at most PIECE_CHARS characters, at a line break where there is one near the cut.

    A 50 MB document without a break would otherwise go to the Rust tokenizer in one call: minutes that no Ctrl-C can
    interrupt, and gigabytes of memory. Normal articles are far shorter and go in whole."""
    start = 0
    while len(text) - start > PIECE_CHARS:
        cut = text.rfind("\n", start + PIECE_CHARS // 2, start + PIECE_CHARS) + 1 or start + PIECE_CHARS
        yield text[start:cut]
        start = cut
    yield text[start:]


def encode(tokenizer, texts: list[str], dtype=np.int64) -> np.ndarray:
    """The texts as one flat token array, each document followed by EOS so documents stay apart once concatenated."""
    eos = np.array([tokenizer.eos_token_id], dtype=dtype)
    out, batch, chars = [], [], 0  # batch: (piece, whether it ends its document)

    def run() -> None:
        encoded = tokenizer.backend_tokenizer.encode_batch_fast([p for p, _ in batch], add_special_tokens=False)
        for e, (_, ends) in zip(encoded, batch):
            out.append(np.array(e.ids, dtype=dtype))
            if ends:
                out.append(eos)

    for text in texts:
        pieces = list(_pieces(text))
        for j, piece in enumerate(pieces):
            batch.append((piece, j == len(pieces) - 1))
            chars += len(piece)
            if chars >= BATCH_CHARS:
                run()
                batch, chars = [], 0
    if batch:
        run()
    return np.concatenate(out) if out else np.zeros(0, dtype)


def cache_folder(cache_root: Path, key: dict) -> Path:
    return cache.folder(cache_root, "blocks", key)


def tokenizer_digest(tokenizer) -> str:
    """A digest of what the tokenizer does. A save and reload turns some unset fields (None) into empty strings, which
    tokenize the same: both count as empty, so a checkpoint's copy of a tokenizer has the digest of the original."""
    def canonical(value):
        if isinstance(value, dict):
            return {k: canonical(v) for k, v in value.items()}
        if isinstance(value, list):
            return [canonical(v) for v in value]
        return "" if value is None else value
    spec = canonical(json.loads(tokenizer.backend_tokenizer.to_str()))
    return hashlib.sha256(json.dumps(spec, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def _progress(stats: dict, start: float, final: bool = False) -> None:
    docs = sum(s["documents"] for s in stats.values())
    tokens = sum(s["tokens"] for s in stats.values())
    rate = tokens / max(time.perf_counter() - start, 1e-9)
    end = "\n" if final else "\r"
    print(f"tokenizing: {docs:,} documents, {tokens:,} tokens, {rate:,.0f} tokens/s", end=end, file=sys.stderr, flush=True)


def write(folder: Path, docs: Iterable[tuple[str, str]], tokenizer, block_size: int, byte_counts: dict) -> None:
    """Tokenize (split, text) pairs into <folder>/{train,test}.bin and their statistics into <folder>/meta.json.

    The caller (cache.once) gives a temporary folder and renames it into place when this returns."""
    dtype = np.uint16 if len(tokenizer) <= 1 << 16 else np.uint32
    files = {s: open(folder / f"{s}.bin", "wb") for s in SPLITS}
    stats = {s: {"documents": 0, "tokens": 0, "largest_document_bytes": 0} for s in SPLITS}
    pending = {s: [] for s in SPLITS}
    pending_chars = dict.fromkeys(SPLITS, 0)
    start, last = time.perf_counter(), 0.0

    def flush(split: str) -> None:
        flat = encode(tokenizer, pending[split], dtype)
        files[split].write(flat.tobytes())
        stats[split]["documents"] += len(pending[split])
        stats[split]["tokens"] += len(flat)
        pending[split], pending_chars[split] = [], 0

    try:
        for split, text in docs:
            pending[split].append(text)
            pending_chars[split] += len(text)
            if len(text) * 4 > stats[split]["largest_document_bytes"]:  # cheap bound first: encoding is the costly part
                stats[split]["largest_document_bytes"] = max(stats[split]["largest_document_bytes"], len(text.encode()))
            if len(pending[split]) >= BATCH_DOCS or pending_chars[split] >= BATCH_CHARS:
                flush(split)
                if time.perf_counter() - last > 2:
                    last = time.perf_counter()
                    _progress(stats, start)
        for split in SPLITS:
            if pending[split]:
                flush(split)
    finally:
        for f in files.values():
            f.close()
    for split, s in stats.items():
        s["blocks"] = s["tokens"] // block_size
        s["tokens_in_blocks"] = s["blocks"] * block_size
        s["bytes"] = byte_counts[split]
    meta = {"dtype": np.dtype(dtype).name, "block_size": block_size, "stats": stats,
            "seconds": round(time.perf_counter() - start, 2)}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    _progress(stats, start, final=True)


def token_bytes(tokenizer) -> np.ndarray:
    """How many UTF-8 bytes of text each token id stands for: special tokens none; a byte-level token one byte per
    character of its name (each stands for one byte); a SentencePiece token its text, with "▁" as a space and
    <0xNN> byte fallbacks as one byte."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_chars = set(bytes_to_unicode().values())
    vocab = tokenizer.get_vocab()
    table = np.zeros(max(vocab.values()) + 1, dtype=np.int64)
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    for name, i in vocab.items():
        if i in special:
            continue
        if len(name) == 6 and name.startswith("<0x") and name.endswith(">"):
            table[i] = 1
        elif all(c in byte_chars for c in name):
            table[i] = len(name)
        else:
            table[i] = len(name.replace("\u2581", " ").encode())
    return table


def label_bytes_per_token(dataset, tokenizer) -> float:
    """UTF-8 bytes per predicted token over exactly the blocks evaluated (each block's labels after its first token, as
    the model shifts them): bits per byte = eval loss / ln 2 / this. The whole split's ratio is off for a subset
    (--max_eval_samples): 14% at 16 blocks on the sample corpus."""
    table, n_bytes, n_tokens = token_bytes(tokenizer), 0, 0
    for item in dataset:
        labels = np.asarray(item["labels"])[1:]
        n_bytes += int(table[labels].sum())
        n_tokens += len(labels)
    return n_bytes / max(n_tokens, 1)


def load(folder: Path) -> dict | None:
    """The cached blocks' metadata, or None when there is no complete cache in folder."""
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def datasets(folder: Path, meta: dict) -> dict[str, Blocks]:
    return {s: Blocks(folder / f"{s}.bin", meta["dtype"], meta["block_size"]) for s in SPLITS}
