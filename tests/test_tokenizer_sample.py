"""--tokenizer_train_sample: the BPE learns from the head of the training split, or from documents spread over all of it."""
import random

from conftest import write_jsonl
from zhpretrain.data import cache, tokenizer
from zhpretrain.config import DataArguments, ModelArguments

FIRST, SECOND = "甲乙丙丁戊己庚辛壬癸", "子丑寅卯辰巳午未申酉"  # the characters of the corpus's first and second half


def _corpus(path, documents=200):
    rng = random.Random(0)
    words = lambda chars: "，".join("".join(rng.choices(chars, k=rng.randint(2, 4))) for _ in range(20))  # noqa: E731
    return write_jsonl(path, [{"text": words(FIRST if i < documents // 2 else SECOND)} for i in range(documents)])


def _learned_characters(sample, corpus) -> set[str]:
    data_args = DataArguments(train_file=str(corpus), validation_split_percentage=1)
    model_args = ModelArguments(tokenizer_vocab_size=400, tokenizer_train_max_chars=3000, tokenizer_train_sample=sample)
    tok = tokenizer.train(tokenizer.training_texts(data_args, model_args), 400, 3000)
    return {c for token in tok.get_vocab() for c in tok.convert_tokens_to_string([token])}


def test_spread_learns_from_both_halves_and_head_from_the_first_only(tmp_path):
    corpus = _corpus(tmp_path / "c.jsonl")  # 200 documents of ~60 characters: 3000 characters are the first ~50
    head, spread = _learned_characters("head", corpus), _learned_characters("spread", corpus)
    assert set(FIRST) <= head and not set(SECOND) & head
    assert set(FIRST) <= spread and set(SECOND) <= spread


def test_spread_takes_an_even_stride_over_the_whole_split_up_to_max_chars():
    texts = [f"{i:06d}abcd" for i in range(10_000)]  # 10 characters each, 100,000 in all
    sample = tokenizer.spread(iter(texts), max_chars=2000)
    assert sum(map(len, sample)) == 2000
    ordinals = [int(t[:6]) for t in sample]
    gaps = {b - a for a, b in zip(ordinals, ordinals[1:])}
    assert ordinals[0] == 0 and ordinals[-1] >= 10_000 - 64 and gaps <= {32, 64}  # 10,000 / 200 = 50 on average
    assert tokenizer.spread(iter(texts[:50]), max_chars=2000) == texts[:50]  # a small split is taken whole


def test_the_sample_is_part_of_the_tokenizer_cache_key_and_head_keeps_the_old_key(tmp_path):
    source = {"files": [["x", 1, 2]]}
    head, spread = (tokenizer.cache_folder(tmp_path, source, ModelArguments(tokenizer_train_sample=s, tokenizer_train_max_chars=3_000_000))
                    for s in ("head", "spread"))
    assert head != spread
    before = cache.folder(tmp_path, "tokenizer", {**source, "vocab_size": 32000, "max_chars": 3_000_000})
    assert head == before  # caches written before the option existed are still found
