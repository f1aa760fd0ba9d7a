"""Packing documents with EOS into blocks: nothing lost but the last partial block, counted, cached atomically."""
import json

import numpy as np
import torch

from zhpretrain.data import blocks, cache, tokenizer

TEXTS = [f"第{i}篇：" + "陕西省是中国的一个省。" * (i % 7 + 1) for i in range(300)]


def tok():
    return tokenizer.train(iter(TEXTS), vocab_size=500, max_chars=10**6)


def test_blocks_keep_every_token_but_the_last_partial_block(tmp_path):
    t = tok()
    docs = [("test" if i % 10 == 0 else "train", text) for i, text in enumerate(TEXTS)]
    byte_counts = {"train": 11, "test": 22}
    cache.write(tmp_path / "b", lambda tmp: blocks.write(tmp, iter(docs), t, 64, byte_counts))
    meta = blocks.load(tmp_path / "b")
    ids = [t(text)["input_ids"] + [t.eos_token_id] for _, text in docs if _ == "train"]
    flat = [x for doc in ids for x in doc]
    train = meta["stats"]["train"]
    assert train["documents"] == 270 and train["tokens"] == len(flat) and train["bytes"] == 11
    assert train["blocks"] == len(flat) // 64 and train["tokens"] - train["tokens_in_blocks"] < 64
    data = blocks.datasets(tmp_path / "b", meta)
    assert len(data["train"]) == train["blocks"]
    got = np.concatenate([data["train"][i]["input_ids"].numpy() for i in range(len(data["train"]))])
    assert got.tolist() == flat[:train["tokens_in_blocks"]]
    item = data["train"][0]
    assert item["input_ids"].shape == (64,) and item["labels"] is item["input_ids"]
    assert json.loads((tmp_path / "b" / "meta.json").read_text()) == meta


def test_a_build_that_dies_leaves_no_cache(tmp_path):
    def docs():
        yield "train", TEXTS[0]
        raise KeyboardInterrupt  # killed mid-way

    try:
        cache.write(tmp_path / "b", lambda tmp: blocks.write(tmp, docs(), tok(), 64, {"train": 0, "test": 0}))
    except KeyboardInterrupt:
        pass
    assert not (tmp_path / "b").exists() and list(tmp_path.iterdir()) == []
    assert blocks.load(tmp_path / "b") is None


def test_cache_key_changes_with_tokenizer_and_block_size(tmp_path):
    t = tok()
    base = {"files": [["a", 1, 2]], "tokenizer": blocks.tokenizer_digest(t), "block_size": 64}
    assert blocks.cache_folder(tmp_path, base) == blocks.cache_folder(tmp_path, dict(base))
    assert blocks.cache_folder(tmp_path, base) != blocks.cache_folder(tmp_path, {**base, "block_size": 128})
    t.add_special_tokens({"additional_special_tokens": ["<x>"]})
    assert blocks.cache_folder(tmp_path, base) != blocks.cache_folder(tmp_path, {**base, "tokenizer": blocks.tokenizer_digest(t)})


def test_a_huge_document_is_tokenized_in_pieces_to_the_same_tokens_and_one_eos():
    t = tok()
    normal = "陕西省是中国的一个省。\n" * 40
    huge = normal * 400  # 200,000 characters: cut into pieces at line breaks
    assert len(huge) > 2 * blocks.PIECE_CHARS
    ids = blocks.encode(t, [huge, "长江"]).tolist()
    # A second implementation: each line tokenized alone (line breaks end pre-tokens, so cuts there change nothing).
    expected = [x for line in huge.splitlines(keepends=True) for x in t(line)["input_ids"]] + [t.eos_token_id]
    assert ids == expected + t("长江")["input_ids"] + [t.eos_token_id]
    assert ids.count(t.eos_token_id) == 2


def test_the_largest_document_of_each_split_is_counted(tmp_path):
    docs = [("train", "短文。"), ("test", "测试" * 10), ("test", "长" * 1000), ("train", "a" * 50)]
    cache.write(tmp_path / "b", lambda tmp: blocks.write(tmp, iter(docs), tok(), 8, {"train": 0, "test": 0}))
    stats = blocks.load(tmp_path / "b")["stats"]
    assert stats["test"]["largest_document_bytes"] == 3000 and stats["train"]["largest_document_bytes"] == 50


def test_bits_per_byte_counts_the_bytes_of_exactly_the_evaluated_labels():
    t = tok()
    docs = ["abc陕西省是中国的一个省。", "xyz长江是中国最长的河流。", "数学是"]
    flat = blocks.encode(t, docs)
    block = [{"input_ids": torch.from_numpy(flat), "labels": torch.from_numpy(flat)}]  # one block holding the three documents
    # Independently: the text's bytes, less the first token's ("a", predicted by nothing); the EOS tokens are no text.
    assert t.convert_ids_to_tokens(int(flat[0])) in ("a", "ab", "abc")
    first = len(t.convert_ids_to_tokens(int(flat[0])))
    expected = (sum(len(d.encode()) for d in docs) - first) / (len(flat) - 1)
    assert blocks.label_bytes_per_token(block, t) == expected
    # Cut after the first EOS: the second block starts with the second document's first token, which nothing predicts.
    cut = int(np.flatnonzero(flat == t.eos_token_id)[0]) + 1
    parts = [{"labels": torch.from_numpy(flat[:cut])}, {"labels": torch.from_numpy(flat[cut:])}]
    second_first = t.decode([int(flat[cut])])
    assert "\ufffd" not in second_first and docs[1].startswith(second_first)
    lost = first + len(second_first.encode())
    assert blocks.label_bytes_per_token(parts, t) == (sum(len(d.encode()) for d in docs) - lost) / (len(flat) - 2)
