"""Concatenate documents with EOS between them, cut them into fixed-length blocks, count them, and cache them on disk."""
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

BATCH_DOCS = 512  # documents per tokenizer call: large enough for the Rust tokenizer to use every core
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


def encode(tokenizer, texts: list[str], dtype=np.int64) -> np.ndarray:
    """The texts as one flat token array, each document followed by EOS so documents stay apart once concatenated."""
    eos = tokenizer.eos_token_id
    ids = [e.ids + [eos] for e in tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
    return np.fromiter((t for doc in ids for t in doc), dtype=dtype, count=sum(map(len, ids)))


def cache_folder(cache_root: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root / f"blocks-{digest}"


def tokenizer_digest(tokenizer) -> str:
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def _progress(stats: dict, start: float, final: bool = False) -> None:
    docs = sum(s["documents"] for s in stats.values())
    tokens = sum(s["tokens"] for s in stats.values())
    rate = tokens / max(time.perf_counter() - start, 1e-9)
    end = "\n" if final else "\r"
    print(f"tokenizing: {docs:,} documents, {tokens:,} tokens, {rate:,.0f} tokens/s", end=end, file=sys.stderr, flush=True)


def build(docs: Iterable[tuple[str, str]], tokenizer, block_size: int, folder: Path, byte_counts: dict) -> dict:
    """Tokenize (split, text) pairs into <folder>/{train,test}.bin and return the data statistics.

    Written into a temporary folder renamed into place at the end, so a killed run never leaves a cache that looks whole."""
    dtype = np.uint16 if len(tokenizer) <= 1 << 16 else np.uint32
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    files = {s: open(tmp / f"{s}.bin", "wb") for s in SPLITS}
    stats = {s: {"documents": 0, "tokens": 0} for s in SPLITS}
    pending = {s: [] for s in SPLITS}
    start, last = time.perf_counter(), 0.0

    def flush(split: str) -> None:
        flat = encode(tokenizer, pending[split], dtype)
        files[split].write(flat.tobytes())
        stats[split]["documents"] += len(pending[split])
        stats[split]["tokens"] += len(flat)
        pending[split] = []

    try:
        for split, text in docs:
            pending[split].append(text)
            if len(pending[split]) >= BATCH_DOCS:
                flush(split)
                if time.perf_counter() - last > 2:
                    last = time.perf_counter()
                    _progress(stats, start)
        for split in SPLITS:
            if pending[split]:
                flush(split)
        for f in files.values():
            f.close()
        for split, s in stats.items():
            s["blocks"] = s["tokens"] // block_size
            s["tokens_in_blocks"] = s["blocks"] * block_size
            s["bytes"] = byte_counts[split]
        meta = {"dtype": np.dtype(dtype).name, "block_size": block_size, "stats": stats,
                "seconds": round(time.perf_counter() - start, 2)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        _progress(stats, start, final=True)
        try:
            os.rename(tmp, folder)
        except OSError:  # another node sharing this cache finished first: keep its copy
            if not folder.exists():
                raise
    finally:
        for f in files.values():
            f.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def load(folder: Path) -> dict | None:
    """The cached blocks' metadata, or None when there is no complete cache in folder."""
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def datasets(folder: Path, meta: dict) -> dict[str, Blocks]:
    return {s: Blocks(folder / f"{s}.bin", meta["dtype"], meta["block_size"]) for s in SPLITS}
