"""Benchmark streaming: how long a resume takes at an early and at a late position of a file (seek, then re-tokenize
at most one batch) against replaying the stream up to that position, which is what the Trainer does by default.

    python tests/benchmarks/bench_stream.py ../shared/data/zhwiki-sample.jsonl --tokenizer DIR [--out result.json]

With --parse-cost it times parsing every record (each rank does that) against tokenizing them (ranks share that).
With --full it streams the whole file once (one rank) and reports blocks and time; wrap it in /usr/bin/time -v for the
peak memory of streaming a file of any size.
With --step_ms MS it times a consumer that "trains" MS ms (a sleep, which releases the GIL as a GPU step mostly does)
per batch of --batch blocks, for --blocks blocks: reading the stream synchronously (StreamingBlocks._blocks, what
__iter__ did before the prefetch thread) against iterating it (the producer thread tokenizes during the steps).
"""
import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_preprocess import environment  # noqa: E402
from zhpretrain.data import stream, tokenizer  # noqa: E402
from zhpretrain.config import DataArguments  # noqa: E402


def first_block_after_resume(args, tok, state) -> float:
    start = time.perf_counter()
    ds = stream.StreamingBlocks(args, tok)
    ds.load_state_dict(state)
    next(iter(ds))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file")
    parser.add_argument("--tokenizer", required=True, help="a tokenizer folder (e.g. the one a run cached)")
    parser.add_argument("--block_size", type=int, default=512)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--parse-cost", action="store_true",
                        help="time parsing every record (what each rank does) against tokenizing them (what ranks share)")
    parser.add_argument("--step_ms", type=float, help="time a consumer training this long per batch, with and without prefetch")
    parser.add_argument("--batch", type=int, default=8, help="blocks per training step (with --step_ms)")
    parser.add_argument("--blocks", type=int, default=4000, help="blocks consumed (with --step_ms)")
    parser.add_argument("--out")
    a = parser.parse_args()
    args = DataArguments(train_file=a.file, block_size=a.block_size, streaming=True, validation_split_percentage=1)
    tok = tokenizer.load(a.tokenizer)
    ds = stream.StreamingBlocks(args, tok)
    result = {**environment(), "file": a.file, "block_size": a.block_size}
    start = time.perf_counter()
    if a.parse_cost:
        from zhpretrain.data import readers

        texts = [t for t, *_ in readers.read_texts(ds.files, None, False, readers.ReadStats())]
        parse = time.perf_counter() - start
        start = time.perf_counter()
        tok.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        result.update(parse_s=round(parse, 2), tokenize_s=round(time.perf_counter() - start, 2))
        result["parse_share"] = round(result["parse_s"] / (result["parse_s"] + result["tokenize_s"]), 3)
    elif a.step_ms is not None:
        result.update(step_ms=a.step_ms, batch=a.batch, blocks=a.blocks, steps_s=round(a.blocks // a.batch * a.step_ms / 1000, 2))
        plain = (block for _, block in stream.StreamingBlocks(args, tok)._blocks(ds.state))
        for name, blocks in (("synchronous_s", plain), ("prefetch_s", iter(stream.StreamingBlocks(args, tok)))):
            start = time.perf_counter()
            for n, _ in enumerate(itertools.islice(blocks, a.blocks), 1):
                if n % a.batch == 0:
                    time.sleep(a.step_ms / 1000)
            result[name] = round(time.perf_counter() - start, 2)
    elif a.full:
        blocks = sum(1 for _ in stream_one_epoch(ds))
        result.update(blocks=blocks, seconds=round(time.perf_counter() - start, 1))
    else:
        positions, n, last = {}, 0, None
        for _ in iter(ds):  # one pass to find an early and a late position, timing the replay to each
            n += 1
            if n == 100:
                positions[n] = (ds.state_dict(n), time.perf_counter() - start)
            if ds.history[n]["epoch"] > 0:  # the late position: the last block of the first pass over the file
                positions[n - 1] = last
                break
            last = (ds.state_dict(n), time.perf_counter() - start)
        (early, (s1, replay1)), (late, (s2, replay2)) = sorted(positions.items())
        result.update({"early_block": early, "early_resume_s": round(first_block_after_resume(args, tok, s1), 3),
                       "early_replay_s": round(replay1, 2), "late_block": late,
                       "late_resume_s": round(first_block_after_resume(args, tok, s2), 3), "late_replay_s": round(replay2, 2)})
    print(json.dumps(result, indent=1, ensure_ascii=False))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1, ensure_ascii=False))


def stream_one_epoch(ds):
    for block in ds:
        if ds.history[next(reversed(ds.history))]["epoch"] > 0:
            return
        yield block


if __name__ == "__main__":
    main()
