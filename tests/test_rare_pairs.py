"""Han runs cut between rare character pairs before the BPE trainer counts them (zhpretrain/data/rare_pairs.py)."""
import collections
import json
import random

from conftest import REPO
from zhpretrain.data import rare_pairs, tokenizer

HAN = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所"


def _text(seed: int, n: int = 400) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(HAN[:20]) if rng.random() < 0.8 else rng.choice(HAN + "ab ，。1") for _ in range(n))


def _exact_pairs(texts):
    """Adjacent pairs of two CJK Unified Ideographs, counted by hand."""
    han = lambda c: "\u4e00" <= c <= "\u9fff"  # noqa: E731
    return collections.Counter(t[i:i + 2] for t in texts for i in range(len(t) - 1) if han(t[i]) and han(t[i + 1]))


def test_counts_are_never_below_the_true_counts_and_exact_without_collisions():
    texts = [_text(s) for s in range(50)]
    small, large = rare_pairs.PairCounts(0), rare_pairs.PairCounts(10**8)  # 2^16 and 2^24 counters a row
    for t in texts:
        small.add(t)
        large.add(t)
    exact = _exact_pairs(texts)
    keys = rare_pairs._han_pairs("".join(p for p in exact))[0][::2]  # each pair's own key: the pairs laid end to end
    truth = list(exact.values())
    assert len(keys) == len(truth) == len(exact) > 1000
    assert all(e >= t for e, t in zip(small.estimate(keys), truth))
    assert list(large.estimate(keys)) == truth


def test_cut_puts_a_newline_between_exactly_the_han_pairs_seen_fewer_times_than_the_threshold():
    texts = [_text(s) for s in range(50)]
    counts = rare_pairs.PairCounts(10**8)
    for t in texts:
        counts.add(t)
    exact, han = _exact_pairs(texts), lambda c: "\u4e00" <= c <= "\u9fff"  # noqa: E731
    for threshold in (2, 5, 30):
        for t in texts[:5]:
            expected = t[0] + "".join(("\n" if han(a) and han(b) and exact[a + b] < threshold else "") + b
                                      for a, b in zip(t, t[1:]))
            assert counts.cut(t, threshold) == expected
    assert counts.cut("", 5) == "" and counts.cut("abc", 5) == "abc"
    assert counts.cut("\U00020000\U00020001", 5) == "\U00020000\n\U00020001"  # extension B: pairs seen never
    assert counts.cut("\uf900\uf901", 5) == "\uf900\uf901"  # compatibility ideographs are left whole (NFC moves them)


def test_bpe_with_the_cut_learns_what_whole_runs_learn():
    # The demo corpus (59k training characters) at the demo's vocabulary: the cut drops only pairs too rare to merge,
    # so the merges, and the held-out text's tokens, stay those of whole-run training. Not all: a byte-level merge of
    # one character with part of the next (measured: 4 of 1,790, such as 分 + two of the three bytes of 析) counts all
    # characters sharing those bytes, and loses the cut places.
    texts = [json.loads(line)["text"] for line in (REPO / "data" / "demo-zhwiki.jsonl").read_text("utf-8").splitlines()]
    train, held_out = texts[:-10], texts[-10:]
    whole = tokenizer.train(iter(train), 2048, 10**7, cut=False).backend_tokenizer
    cut = tokenizer.train(iter(train), 2048, 10**7).backend_tokenizer
    merges = [{tuple(m) for m in json.loads(t.to_str())["model"]["merges"]} for t in (whole, cut)]
    assert len(merges[0] & merges[1]) >= 0.99 * len(merges[0]) > 1500
    tokens = [sum(len(t.encode(d).ids) for d in held_out) for t in (whole, cut)]
    assert abs(tokens[1] - tokens[0]) <= 0.005 * tokens[0], tokens
    alike = sum(whole.encode(d).tokens == cut.encode(d).tokens for d in held_out)
    assert alike >= 6, f"{alike} of 10 held-out documents tokenized alike"
