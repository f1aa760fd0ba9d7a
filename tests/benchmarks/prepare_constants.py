"""Measure preprocessing as `python pretrain.py` does it before training, and the constants of its start-up estimate
(data/prepare.py): hashing the data files, training the tokenizer, tokenizing and packing into the token cache.

    # a corpus of `scale` times a JSON Lines file: whole copies, each copy's texts changed (see `grow`) so that no
    # document repeats and every copy is real work for the split, the duplicate count and the tokenizer
    python tests/benchmarks/prepare_constants.py grow ../shared/data/zhwiki-sample.jsonl 2 /tmp/corpus-2x.jsonl
    # the measurement (one JSON object; peak memory from the wrapper, which counts the tokenizer's child process)
    taskset -c 1 env OMP_NUM_THREADS=1 RAYON_NUM_THREADS=1 /usr/bin/time -v \
        python tests/benchmarks/prepare_constants.py measure /tmp/corpus-2x.jsonl --cache_dir /tmp/c2
"""
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def perturb(text: str, copy: int) -> str:
    """Copy `copy` (1, 2, ...) of a text: its paragraphs rotated by `copy`, and the copy's number in front, so the text
    differs from every other copy (the split hashes whole texts) while its words and length stay those of real text."""
    paragraphs = text.split("\n")
    k = copy % len(paragraphs)
    return f"（{copy}）" + "\n".join(paragraphs[k:] + paragraphs[:k])


def grow(source: str, scale: float, out: str) -> None:
    """Write `scale` times the JSON Lines file `source` into `out`: whole copies (copy 0 as it is, the others perturbed),
    then the first part of one more copy for a fractional scale (0.5: the first half of the file's bytes)."""
    size, written, copy = os.path.getsize(source), 0, 0
    with open(out, "w", encoding="utf-8") as w:
        while written < scale * size:
            with open(source, encoding="utf-8") as r:
                for line in r:
                    if written >= scale * size:
                        break
                    if copy:
                        record = json.loads(line)
                        record["text"] = perturb(record["text"], copy)
                        line = json.dumps(record, ensure_ascii=False) + "\n"
                    w.write(line)
                    written += len(line.encode())
            copy += 1


def measure(path: str, cache_dir: str | None) -> dict:
    from zhpretrain.config import DataArguments, ModelArguments
    from zhpretrain.data import prepare, tokenizer
    from bench_preprocess import environment  # this folder is on sys.path when run as a script

    data_args = DataArguments(train_file=path, cache_dir=cache_dir or tempfile.mkdtemp(prefix="constants-"))
    model_args = ModelArguments()  # the defaults: a 32,000-token BPE trained on 3 M characters; block_size 512
    no_resume = SimpleNamespace(tokenizer=None, checkpoint=None)
    times, cpu = {}, {}  # wall-clock seconds, and CPU seconds (this process and its children): on a core shared with
    # other jobs the wall clock stretches, the CPU time much less

    def clock():
        return time.perf_counter(), sum(sum(resource.getrusage(who)[:2]) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))

    def phase(name, work):
        wall, used = clock()
        result = work()
        times[name], cpu[name.replace("_s", "_cpu_s")] = clock()[0] - wall, clock()[1] - used
        return result

    key = phase("hash_s", lambda: prepare.source(data_args))  # hashing every data file (pretrain.py's resume.decide does this)
    # trains the BPE (in a child process) and caches it
    phase("tokenizer_s", lambda: tokenizer.choose(data_args, model_args, key, None, builder=True))
    # the cached tokenizer, then reading, splitting, tokenizing, packing and writing the blocks
    tok, datasets, meta = phase("blocks_s", lambda: prepare.prepare(data_args, model_args, key, no_resume, builder=True))
    folder = next(Path(data_args.cache_dir).glob("blocks-*"))
    file_bytes = os.path.getsize(path)
    cache = sum(p.stat().st_size for p in folder.iterdir())
    total = sum(times.values())
    return {**environment(), "load_average_at_end": os.getloadavg()[0], "file": path, "file_bytes": file_bytes,
            "text_bytes": sum(s["bytes"] for s in meta["stats"].values()),
            "documents": sum(s["documents"] for s in meta["stats"].values()),
            "duplicates": sum(s.get("duplicates", 0) for s in meta["stats"].values()),
            "tokens": sum(s["tokens"] for s in meta["stats"].values()), "vocabulary": len(tok),
            **{k: round(v, 1) for k, v in {**times, **cpu}.items()}, "total_s": round(total, 1),
            "total_cpu_s": round(sum(cpu.values()), 1),
            "blocks_file_bytes_per_s": round(file_bytes / times["blocks_s"]), "cache_bytes": cache,
            "cache_bytes_per_file_byte": round(cache / file_bytes, 4)}


def main() -> None:
    if sys.argv[1:2] == ["grow"]:
        grow(sys.argv[2], float(sys.argv[3]), sys.argv[4])
        return
    args = sys.argv[2:] if sys.argv[1:2] == ["measure"] else sys.argv[1:]
    cache_dir = args[args.index("--cache_dir") + 1] if "--cache_dir" in args else None
    print(json.dumps(measure(args[0], cache_dir), indent=1, ensure_ascii=False), flush=True)


if __name__ == "__main__":  # the tokenizer trains in a spawned child, which imports this file
    main()
