"""Benchmark the BPE's training recipe: characters per token on held-out text and the training process's peak memory,
for several vocabulary sizes and amounts of training text (spread over the training split, as
--tokenizer_train_sample spread takes it).

    taskset -c 1 env RAYON_NUM_THREADS=1 python tests/benchmarks/bench_tokenizer.py ../shared/data/zhwiki-sample.jsonl \\
        ../shared/data/zhwiki-val.jsonl --vocab 4000 8000 16000 32000 --chars 3000000 --recipe cut whole --qwen2 --out r.json

--recipe cut is the pipeline's (Han runs cut between pairs too rare to merge, data/rare_pairs.py), whole the control
(whole Han runs as the trainer's words, the recipe before 2026-12-02); --chars 0 is the whole training split.
Each point trains in its own process; its peak RSS is that process's ru_maxrss (os.wait4), reading and sampling the
corpus included, as in the pipeline's tokenizer child. Characters per token: all characters of the held-out
documents over all their tokens (no special tokens), NFC as the tokenizer sees them. Each point also saves its
merges, and a "cut" point reports the share of them that the "whole" point of the same vocabulary and text learned
(when it ran first). --qwen2 adds Qwen2's 151k tokenizer as the reference.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_preprocess import environment  # noqa: E402
from zhpretrain.data import rare_pairs, tokenizer  # noqa: E402
from zhpretrain.config import DataArguments, ModelArguments  # noqa: E402

ALL = 10**10  # --chars 0: more than any training split here


def held_out(path: str) -> list[str]:
    lines = Path(path).read_text(encoding="utf-8").split("\n")  # not splitlines: U+2028 may sit inside a string
    return [unicodedata.normalize("NFC", json.loads(line)["text"]) for line in lines if line.strip()]


def chars_per_token(backend, texts: list[str]) -> float:
    return sum(map(len, texts)) / sum(len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False))


def _sample(args, max_chars: int):
    data_args = DataArguments(train_file=args.train)
    model_args = ModelArguments(tokenizer_train_max_chars=max_chars,
                                tokenizer_train_sample="spread")
    return tokenizer.training_texts(data_args, model_args)


def one(args) -> dict:
    """In the child: train one BPE as the pipeline's tokenizer child does, then score it."""
    max_chars = args.chars or ALL
    seen = []

    def counted(texts):
        for t in texts:
            seen.append(len(t[:tokenizer._per_document(max_chars)]))
            yield t
    if args.cut_below:
        rare_pairs.threshold = lambda chars, vocab: args.cut_below
    start = time.perf_counter()
    tok = tokenizer.train(counted(_sample(args, max_chars)), args.vocab, max_chars, cut=args.recipe == "cut")
    seconds = time.perf_counter() - start
    texts, backend = held_out(args.val), tok.backend_tokenizer
    merges = [" ".join(m) if isinstance(m, list) else m for m in json.loads(backend.to_str())["model"]["merges"]]
    below = rare_pairs.threshold(sum(seen), args.vocab) if args.recipe == "cut" else None
    return {"vocab": args.vocab, "recipe": args.recipe, "cut_below": below, "train_chars": sum(seen), "train_s": round(seconds, 1),
            "chars_per_token": round(chars_per_token(backend, texts), 4), "merges": merges}


def point(args, vocab: int, chars: int, recipe: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, __file__, args.train, args.val, "--one", out.name, "--vocab", str(vocab),
               "--chars", str(chars), "--recipe", recipe, "--cut_below", str(args.cut_below)]
        proc = subprocess.Popen(cmd)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            return {"vocab": vocab, "chars": chars, "recipe": recipe, "exit_code": proc.returncode}
        result = json.loads(Path(out.name).read_text())
    return {**result, "peak_rss_gb": round(usage.ru_maxrss / 2**20, 3)}  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("train")
    parser.add_argument("val")
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000])
    parser.add_argument("--chars", type=int, nargs="+", default=[3_000_000], help="training characters; 0 = all")
    parser.add_argument("--recipe", nargs="+", default=["whole", "cut"], choices=["cut", "whole"])
    parser.add_argument("--cut_below", type=int, default=0, help="cut below this pair count (0: rare_pairs.threshold)")
    parser.add_argument("--qwen2", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.one:
        args.vocab, args.chars, args.recipe = args.vocab[0], args.chars[0], args.recipe[0]
        Path(args.one).write_text(json.dumps(one(args)))
        return
    report = {"environment": environment(), "command": " ".join(sys.argv), "points": []}
    if args.qwen2:
        with tempfile.TemporaryDirectory() as root:
            qwen = tokenizer.load("qwen2", cache_root=Path(root)).backend_tokenizer
            report["qwen2_chars_per_token"] = round(chars_per_token(qwen, held_out(args.val)), 4)
        print(json.dumps({"qwen2_chars_per_token": report["qwen2_chars_per_token"]}), flush=True)
    merges = {}  # (vocab, chars) -> the whole recipe's merges
    for recipe in args.recipe:
        for chars in args.chars:
            for vocab in args.vocab:
                result = point(args, vocab, chars, recipe)
                learned = result.pop("merges", [])
                if recipe == "whole":
                    merges[vocab, chars] = set(learned)
                elif (vocab, chars) in merges and learned:
                    result["merges_shared_with_whole"] = round(len(merges[vocab, chars] & set(learned)) / len(learned), 4)
                report["points"].append(result)
                print(json.dumps(result), flush=True)
                if args.out:
                    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
