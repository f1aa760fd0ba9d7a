"""Benchmark preprocessing: the end-to-end rate of building the token blocks from a file (read, parse, tokenize, pack,
write) against the tokenizer alone encoding the same texts in one batched call. Prints and writes JSON with the
commit, date, hardware and library versions.

    python tests/benchmarks/bench_preprocess.py ../shared/data/zhwiki-sample.jsonl [--out result.json]

Peak memory of the whole preprocessing (tokenizer training included) is measured around `--prepare-only`:

    /usr/bin/time -v python tests/benchmarks/bench_preprocess.py FILE --prepare-only --cache_dir /tmp/c

The share of the pipeline's CPU time that is the tokenizer alone (cpu_ratio) is the part that more cores speed up (the
Rust tokenizer encodes a batch on every core); the rest (reading, JSON parsing, hashing for the split, packing,
writing) runs in one Python thread.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from zhpretrain.data import blocks, prepare, readers, split, tokenizer  # noqa: E402
from zhpretrain.config import DataArguments, ModelArguments  # noqa: E402


def environment() -> dict:
    import tokenizers
    import torch
    import transformers

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    return {"commit": commit, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file")
    parser.add_argument("--vocab_size", type=int, default=32000)
    parser.add_argument("--block_size", type=int, default=512)
    parser.add_argument("--tokenizer_train_max_chars", type=int, default=ModelArguments.tokenizer_train_max_chars)
    parser.add_argument("--cache_dir", default=None)
    parser.add_argument("--tokenizer", default=None, help="a ready tokenizer folder (default: train one as pretrain.py does)")
    parser.add_argument("--prepare-only", action="store_true", help="run the whole preprocessing once and stop (for /usr/bin/time -v)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    cache = Path(args.cache_dir or tempfile.mkdtemp(prefix="bench-"))
    data_args = DataArguments(train_file=args.file, block_size=args.block_size, cache_dir=str(cache))
    model_args = ModelArguments(tokenizer_vocab_size=args.vocab_size, tokenizer_train_max_chars=args.tokenizer_train_max_chars)

    key = prepare.source(data_args)
    if args.prepare_only:  # what pretrain.py does before training: the tokenizer (trained and cached), then the blocks
        start = time.perf_counter()
        tok, datasets, meta = prepare.prepare(data_args, model_args, key, SimpleNamespace(tokenizer=None, checkpoint=None),
                                              builder=True)
        print(json.dumps({"seconds": round(time.perf_counter() - start, 1), "stats": meta["stats"]}))
        return

    tok = (tokenizer.load(args.tokenizer) if args.tokenizer else
           tokenizer.choose(data_args, model_args, key, None, builder=True)[0])  # trained once, then from cache_dir

    # The tokenizer alone: every text already in memory, one batched call. Wall clock and CPU time (the Rust
    # tokenizer's threads included): on a core shared with other jobs only the CPU time means much.
    texts = [t for _, t in split.documents(data_args, readers.ReadStats())]
    chars = sum(map(len, texts))
    start, cpu = time.perf_counter(), time.process_time()
    encoded = tok.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    alone, alone_cpu = time.perf_counter() - start, time.process_time() - cpu
    tokens = sum(len(e.ids) for e in encoded)
    del encoded, texts

    # End to end: read and parse the file, split, tokenize, pack, write the blocks (blocks.write, as prepare() calls it).
    stats = readers.ReadStats()
    out = cache / "bench-blocks"
    out.mkdir(exist_ok=True)
    start, cpu = time.perf_counter(), time.process_time()
    blocks.write(out, split.documents(data_args, stats), tok, args.block_size, stats.bytes)
    pipeline, pipeline_cpu = time.perf_counter() - start, time.process_time() - cpu

    result = {**environment(), "file": args.file, "bytes": os.path.getsize(args.file), "characters": chars, "tokens": tokens,
              "tokenizer_alone_chars_per_s": round(chars / alone), "pipeline_chars_per_s": round(chars / pipeline),
              "tokenizer_alone_s": round(alone, 2), "pipeline_s": round(pipeline, 2), "tokenizer_alone_cpu_s": round(alone_cpu, 2),
              "pipeline_cpu_s": round(pipeline_cpu, 2), "ratio": round(alone / pipeline, 3),
              "cpu_ratio": round(alone_cpu / pipeline_cpu, 3)}
    print(json.dumps(result, indent=1, ensure_ascii=False))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
