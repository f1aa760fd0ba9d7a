"""Benchmark the BPE's training recipe: characters per token on held-out text and the training process's peak memory,
for several vocabulary sizes and amounts of training text (spread over the training split, as
--tokenizer_train_sample spread takes it).

    taskset -c 1 env RAYON_NUM_THREADS=1 python tests/benchmarks/bench_tokenizer.py ../shared/data/zhwiki-sample.jsonl \\
        ../shared/data/zhwiki-val.jsonl --vocab 4000 8000 16000 32000 --chars 3000000 --han_piece 0 2 --qwen2 --out r.json

--han_piece 0 is the pipeline's recipe (whole Han runs as the trainer's words), k > 0 the measured alternative (Han
runs counted in words of at most k characters, tokenizer.HAN_PIECE = 2); --chars 0 is the whole training split.
Each point trains in its own process; its peak RSS is that process's ru_maxrss (os.wait4), reading and sampling the
corpus included, as in the pipeline's tokenizer child. Characters per token: all characters of the
held-out documents over all their tokens (no special tokens), NFC as the tokenizer sees them. For k > 0 it is
measured twice: encoding with Qwen2's split alone (what train() saves) and with the training cut kept.
--qwen2 adds Qwen2's 151k tokenizer as the reference. --distinct counts, for each --han_piece, the distinct words (and
their characters) that the trainer would hold after each --chars characters of the training file in file order (no
training: what the trainer's memory grows with).
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
from zhpretrain.data import tokenizer  # noqa: E402
from zhpretrain.config import DataArguments, ModelArguments  # noqa: E402

ALL = 10**10  # --chars 0: more than any training split here


def held_out(path: str) -> list[str]:
    lines = Path(path).read_text(encoding="utf-8").split("\n")  # not splitlines: U+2028 may sit inside a string
    return [unicodedata.normalize("NFC", json.loads(line)["text"]) for line in lines if line.strip()]


def chars_per_token(backend, texts: list[str]) -> float:
    return sum(map(len, texts)) / sum(len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False))


def one(args) -> dict:
    """In the child: train one BPE as the pipeline's tokenizer child does, then score it."""
    max_chars = args.chars or ALL
    data_args = DataArguments(train_file=args.train)
    model_args = ModelArguments(tokenizer_vocab_size=args.vocab, tokenizer_train_max_chars=max_chars,
                                tokenizer_train_sample="spread")
    seen = []

    def counted(texts):
        for t in texts:
            seen.append(len(t[:tokenizer._per_document(max_chars)]))
            yield t
    start = time.perf_counter()
    tok = tokenizer.train(counted(tokenizer.training_texts(data_args, model_args)), args.vocab, max_chars,
                          han_piece=args.han_piece or None)
    seconds = time.perf_counter() - start
    texts, backend = held_out(args.val), tok.backend_tokenizer
    result = {"vocab": args.vocab, "han_piece": args.han_piece or None, "train_chars": sum(seen),
              "train_s": round(seconds, 1), "chars_per_token": round(chars_per_token(backend, texts), 4)}
    if args.han_piece:
        backend.pre_tokenizer = tokenizer.pre_tokenizer(args.han_piece)
        result["chars_per_token_split_kept"] = round(chars_per_token(backend, texts), 4)
    return result


def distinct(args) -> None:
    from tokenizers import pre_tokenizers

    texts = held_out(args.train)
    for han_piece in args.han_piece:
        full = tokenizer.pre_tokenizer(han_piece)
        split = pre_tokenizers.Sequence([full[i] for i in range(2 if han_piece else 1)])  # without the bytes
        seen, chars, total, marks = set(), 0, 0, sorted(c or ALL for c in args.chars)
        for text in texts:
            for start in range(0, len(text), tokenizer.TRAIN_PIECE_CHARS):
                for word, _ in split.pre_tokenize_str(text[start:start + tokenizer.TRAIN_PIECE_CHARS]):
                    if word not in seen:
                        seen.add(word)
                        chars += len(word)
            total += len(text)
            while marks and (total >= marks[0] or text is texts[-1]):
                print(json.dumps({"han_piece": han_piece or None, "chars": total, "distinct_words": len(seen),
                                  "distinct_chars": chars}), flush=True)
                marks.pop(0)


def point(args, vocab: int, chars: int, han_piece: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, __file__, args.train, args.val, "--one", out.name, "--vocab", str(vocab),
               "--chars", str(chars), "--han_piece", str(han_piece)]
        proc = subprocess.Popen(cmd)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            return {"vocab": vocab, "chars": chars, "han_piece": han_piece or None, "exit_code": proc.returncode}
        result = json.loads(Path(out.name).read_text())
    return {**result, "peak_rss_gb": round(usage.ru_maxrss / 2**20, 3)}  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("train")
    parser.add_argument("val")
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000])
    parser.add_argument("--chars", type=int, nargs="+", default=[3_000_000], help="training characters; 0 = all")
    parser.add_argument("--han_piece", type=int, nargs="+", default=[0, tokenizer.HAN_PIECE], help="0 = whole Han runs")
    parser.add_argument("--qwen2", action="store_true")
    parser.add_argument("--distinct", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.one:
        args.vocab, args.chars, args.han_piece = args.vocab[0], args.chars[0], args.han_piece[0]
        Path(args.one).write_text(json.dumps(one(args)))
        return
    if args.distinct:
        return distinct(args)
    report = {"environment": environment(), "command": " ".join(sys.argv), "points": []}
    if args.qwen2:
        with tempfile.TemporaryDirectory() as root:
            qwen = tokenizer.load("qwen2", cache_root=Path(root)).backend_tokenizer
            report["qwen2_chars_per_token"] = round(chars_per_token(qwen, held_out(args.val)), 4)
        print(json.dumps({"qwen2_chars_per_token": report["qwen2_chars_per_token"]}), flush=True)
    for han_piece in args.han_piece:
        for chars in args.chars:
            for vocab in args.vocab:
                report["points"].append(point(args, vocab, chars, han_piece))
                print(json.dumps(report["points"][-1]), flush=True)
                if args.out:
                    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
