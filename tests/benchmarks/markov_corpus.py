"""A synthetic corpus of any size with the character-pair statistics of a real one, for the tokenizer's memory at sizes
no local corpus reaches (docs/tokenizer.md: the BPE trained on 100 M characters, where the sample has 19.3 M).

Each document is a walk of a first-order Markov chain over characters, its transitions counted in the real corpus:
every pair occurs about as often as in the real text, so the rare-pair cut (zhpretrain/data/rare_pairs.py) cuts as
often, but the walk repeats words less than real text does, so it has more distinct words: its peak memory is an
upper estimate for real text of the same size, not a measurement of it.

    python tests/benchmarks/markov_corpus.py ../shared/data/zhwiki-sample.jsonl /tmp/markov-100M.jsonl --chars 100000000
"""
import argparse
import json
import unicodedata

import numpy as np

DOC_CHARS = 2000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source")
    p.add_argument("out")
    p.add_argument("--chars", type=int, default=100_000_000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    with open(args.source, encoding="utf-8") as f:
        text = "\n".join(unicodedata.normalize("NFC", json.loads(line)["text"]) for line in f if line.strip())
    alphabet, ids = np.unique(np.frombuffer(text.encode("utf-32-le"), np.uint32), return_inverse=True)
    n = len(alphabet)
    pairs, counts = np.unique(ids[:-1].astype(np.int64) * n + ids[1:], return_counts=True)  # sorted by first character
    first, nxt = pairs // n, pairs % n
    cum = np.cumsum(counts)  # one cumulative count over every first character's transitions, in order
    start = np.zeros(n + 1, np.int64)
    np.add.at(start, first + 1, counts)
    start = np.cumsum(start)  # start[c]: the cumulative count before character c's transitions
    rng = np.random.default_rng(args.seed)
    docs = -(-args.chars // DOC_CHARS)
    state = ids[rng.integers(0, len(ids) - 1, docs)]
    walk = np.empty((DOC_CHARS, docs), np.uint32)
    for step in range(DOC_CHARS):
        walk[step] = alphabet[state]
        total = start[state + 1] - start[state]
        alive = total > 0  # the corpus's last character may have no successor: restart there
        draw = start[state] + (rng.random(docs) * np.where(alive, total, 1)).astype(np.int64)
        state = np.where(alive, nxt[np.minimum(np.searchsorted(cum, draw, side="right"), len(nxt) - 1)],
                         ids[rng.integers(0, len(ids) - 1, docs)])
    with open(args.out, "w", encoding="utf-8") as f:
        for d in range(docs):
            f.write(json.dumps({"id": str(d), "text": walk[:, d].tobytes().decode("utf-32-le")}, ensure_ascii=False) + "\n")
    print(json.dumps({"documents": docs, "chars": docs * DOC_CHARS, "alphabet": n, "pairs": len(pairs)}))


if __name__ == "__main__":
    main()
