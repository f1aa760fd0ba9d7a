"""Training the byte-level BPE, its special tokens, its cache, and loading a local tokenizer."""
import pytest

from zhpretrain import tokenizer
from zhpretrain.config import ModelArguments
from zhpretrain.errors import UserError

TEXTS = ["陕西省是中华人民共和国的一个省。", "长江是中国最长的河流，全长6300公里。", "Python 3.12 于2023年发布。"] * 50


def test_trained_bpe_round_trips_and_keeps_eos_and_pad_apart():
    tok = tokenizer.train(iter(TEXTS), vocab_size=400, max_chars=10**6)
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token_id != tok.eos_token_id
    for text in TEXTS[:3] + ["未见过的字：龘𠀀"]:
        assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: nothing is unknown
    assert tok("2023")["input_ids"] == [tok.convert_tokens_to_ids(c) for c in "2023"]  # digits one by one


def test_max_chars_limits_the_training_text():
    seen = []

    def texts():
        for t in TEXTS:
            seen.append(t)
            yield t
    tokenizer.train(texts(), vocab_size=300, max_chars=40)
    assert sum(map(len, seen[:-1])) < 40 <= sum(map(len, seen))


def test_cache_folder_depends_on_data_and_vocab_size_and_saves_atomically(tmp_path):
    args = ModelArguments(tokenizer_vocab_size=300)
    a = tokenizer.cache_folder(tmp_path, {"files": [["x", 1, 2]]}, args)
    assert a == tokenizer.cache_folder(tmp_path, {"files": [["x", 1, 2]]}, args)
    assert a != tokenizer.cache_folder(tmp_path, {"files": [["x", 1, 3]]}, args)
    assert a != tokenizer.cache_folder(tmp_path, {"files": [["x", 1, 2]]}, ModelArguments(tokenizer_vocab_size=301))
    tokenizer.train_and_save(iter(TEXTS), args, a)
    assert (a / "tokenizer.json").is_file() and [p.name for p in tmp_path.iterdir()] == [a.name]
    assert len(tokenizer.load(str(a))) == len(tokenizer.train(iter(TEXTS), 300, 10**6))


def test_load_adds_a_distinct_pad(tmp_path):
    tok = tokenizer.train(iter(TEXTS), vocab_size=300, max_chars=10**6)
    tok.pad_token = tok.eos_token
    tok.save_pretrained(tmp_path / "t")
    loaded = tokenizer.load(str(tmp_path / "t"))
    assert loaded.pad_token_id != loaded.eos_token_id
    with pytest.raises(UserError, match="not a local folder"):
        tokenizer.load(str(tmp_path / "Qwen/Qwen2-0.5B"))
