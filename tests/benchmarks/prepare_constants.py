"""Measure the constants of the start-up estimate (data/prepare.py): how fast the token cache is built, per byte of
data file, and how many bytes of cache a byte of data file takes, with the default tokenizer settings (a 32,000-token BPE).

    python tests/benchmarks/prepare_constants.py ../shared/data/zhwiki-sample.jsonl
"""
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from zhpretrain.config import DataArguments, ModelArguments  # noqa: E402
from zhpretrain.data import blocks, prepare  # noqa: E402

def main() -> None:
    data_args = DataArguments(train_file=sys.argv[1], cache_dir=tempfile.mkdtemp(prefix="constants-"))
    model_args = ModelArguments()
    key = prepare.source(data_args)
    start = time.perf_counter()
    tok, datasets, meta = prepare.prepare(data_args, model_args, key, SimpleNamespace(tokenizer=None, checkpoint=None), builder=True)
    folder = next(Path(data_args.cache_dir).glob("blocks-*"))
    text = sum(s["bytes"] for s in meta["stats"].values())
    cache = sum(p.stat().st_size for p in folder.glob("*.bin"))
    print(json.dumps({"file_bytes": os.path.getsize(sys.argv[1]), "text_bytes": text, "cores": os.cpu_count(),
                      "prepare_s": round(time.perf_counter() - start, 1), "blocks_s": meta["seconds"],
                      "file_bytes_per_s": round(os.path.getsize(sys.argv[1]) / meta["seconds"]), "cache_bytes": cache,
                      "cache_bytes_per_file_byte": round(cache / os.path.getsize(sys.argv[1]), 4)}, indent=1))


if __name__ == "__main__":  # the tokenizer trains in a spawned child, which imports this file
    main()
