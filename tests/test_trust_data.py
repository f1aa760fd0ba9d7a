"""Trust, round 2, on the data side: the held-out split holds no training text (whatever the data's order, duplicates or
validation file), the data key sees every byte, a run's own files are never its data, and every read error is one
paragraph naming the file."""
import bz2
import gzip
import json
import lzma
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import DEMO, write_jsonl
from zhpretrain.data import files, prepare, readers, split, stream, tokenizer
from zhpretrain.errors import UserError

TEXTS = [f"第{i}篇文章，讲的是第{i % 7}条河。" for i in range(400)]


def sides(args) -> dict[str, str]:
    """Each text's side, read back from split.documents."""
    return {t: s for s, t in split.documents(args, readers.ReadStats())}


# ---- class 2: the evaluation split can never silently hold training text

def test_data_grown_at_the_front_keeps_every_old_document_on_its_side(data_args, tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_jsonl(folder / "b.jsonl", [{"text": t} for t in TEXTS[:300]])
    args = data_args(train_file=str(folder), validation_split_percentage=10)
    before = sides(args)
    assert 10 < sum(s == "test" for s in before.values()) < 60  # a 10% split of 300 documents, not everything on one side
    write_jsonl(folder / "a.jsonl", [{"text": t} for t in TEXTS[300:]])  # a new file that sorts first
    after = sides(args)
    assert len(after) == 400 and {t: after[t] for t in before} == before


def test_exact_duplicates_are_all_on_one_side_and_counted(data_args, tmp_path):
    # 100 distinct texts, each 3 times, interleaved: 200 copies after the first of each.
    corpus = write_jsonl(tmp_path / "dup.jsonl", [{"text": TEXTS[i % 100]} for i in range(300)])
    stats = readers.ReadStats()
    seen = {}
    for side, text in split.documents(data_args(train_file=str(corpus), validation_split_percentage=30), stats):
        seen.setdefault(text, set()).add(side)
    assert len(seen) == 100 and all(len(s) == 1 for s in seen.values())
    held_out = sum(s == {"test"} for s in seen.values())
    assert 0 < held_out < 100
    assert stats.duplicates == {"train": 2 * (100 - held_out), "test": 2 * held_out}


def test_a_document_count_split_holds_the_same_documents_whatever_the_order(data_args, tmp_path):
    forward = write_jsonl(tmp_path / "f.jsonl", [{"text": t} for t in TEXTS])
    backward = write_jsonl(tmp_path / "b.jsonl", [{"text": t} for t in reversed(TEXTS)])
    held = [{t for t, s in sides(data_args(train_file=str(f), validation_split_documents=7)).items() if s == "test"}
            for f in (forward, backward)]
    assert len(held[0]) == 7 and held[0] == held[1]
    with pytest.raises(UserError, match=r"validation_split_documents=400 .* \(399\)"):
        list(split.documents(data_args(train_file=str(forward), validation_split_documents=400), readers.ReadStats()))


def test_the_stream_holds_out_exactly_the_documents_the_cache_holds_out(data_args, monkeypatch):
    args = data_args(train_file=str(DEMO), validation_split_percentage=10, block_size=32, streaming=True)
    cached = {t for t, s in sides(data_args(train_file=str(DEMO), validation_split_percentage=10)).items() if s == "test"}
    streamed = []
    monkeypatch.setattr(stream, "encode", lambda tok, texts: streamed.extend(texts) or __import__("numpy").zeros(0, "int64"))
    stream.eval_blocks(args, SimpleNamespace(), 10**6)
    assert cached and set(streamed) == cached


@pytest.fixture(scope="module")
def tok_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    tokenizer.train(iter(TEXTS), vocab_size=300, max_chars=10**6).save_pretrained(folder)
    return folder


def prepared(args, tok_folder):
    from zhpretrain.config import ModelArguments

    resume = SimpleNamespace(tokenizer=None, checkpoint=None, done=None)
    return prepare.prepare(args, ModelArguments(tokenizer_name_or_path=str(tok_folder)), prepare.source(args), resume, True)


@pytest.mark.parametrize("validation", ["same", "copy", "part", "apart"])
def test_a_validation_file_with_training_text_is_warned_about(data_args, tmp_path, tok_folder, capsys, validation):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": t} for t in TEXTS[:300]])
    val = {"same": train, "copy": tmp_path / "copy.jsonl", "part": tmp_path / "part.jsonl", "apart": tmp_path / "apart.jsonl"}[validation]
    if validation == "copy":
        shutil.copy(train, val)
    if validation == "part":  # 3 of its 10 documents are training documents
        write_jsonl(val, [{"text": t} for t in TEXTS[297:307]])
    if validation == "apart":
        write_jsonl(val, [{"text": t} for t in TEXTS[300:]])
    _, _, meta = prepared(data_args(train_file=str(train), validation_file=str(val), block_size=8), tok_folder)
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("warning:") and "validation_file" in line]
    expected = {"same": "300 of the 300", "copy": "300 of the 300", "part": "3 of the 10", "apart": None}[validation]
    if expected is None:
        assert warnings == [] and meta["stats"]["test"]["in_train"] == 0
    else:
        assert len(warnings) == 1 and f"{expected} documents of the validation_file {val}" in warnings[0]
        assert f"train_file {train}" in warnings[0]
        prepared(data_args(train_file=str(train), validation_file=str(val), block_size=8), tok_folder)  # cached: said again
        assert sum(line.startswith("warning:") for line in capsys.readouterr().out.splitlines()) == 1


def test_a_cache_split_by_another_rule_is_not_reused(data_args):
    key = prepare.source(data_args(train_file=str(DEMO)))
    assert key["split_rule"] == split.RULE == "blake2b-of-text"  # caches keyed without it (by position) do not match


# ---- class 4: the data key sees every byte

def test_a_same_size_edit_with_its_mtime_restored_changes_the_key_and_an_unchanged_file_is_not_read_again(
        data_args, tmp_path, monkeypatch, capsys):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in TEXTS] * 200)  # ~3 MB: the edit is between windows
    args = data_args(train_file=str(corpus))
    first = prepare.source(args)
    assert f"hashing {corpus}" in capsys.readouterr().out
    digests = []
    real = files._digest
    monkeypatch.setattr(files, "_digest", lambda p: digests.append(p) or real(p))
    assert prepare.source(args) == first and digests == []  # remembered: not read again, nothing said
    assert "hashing" not in capsys.readouterr().out
    stat = corpus.stat()
    raw = corpus.read_bytes()
    at = raw.index("篇".encode(), len(raw) // 2)  # the middle: between the 16 windows of 64 KB the key used to read
    with open(corpus, "r+b") as f:
        f.seek(at)
        f.write("章".encode())  # one character of a text, the same length in UTF-8
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert corpus.stat().st_size == stat.st_size and corpus.stat().st_mtime_ns == stat.st_mtime_ns
    edited = prepare.source(args)
    assert digests == [str(corpus)] and edited != first
    from zhpretrain.data import blocks
    assert blocks.cache_folder(tmp_path, edited) != blocks.cache_folder(tmp_path, first)  # the token cache is rebuilt


def test_a_damaged_digest_memo_costs_a_hash_not_a_failure(data_args, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in TEXTS])
    args = data_args(train_file=str(corpus))
    first = prepare.source(args)
    (args.cache_root() / prepare.DIGESTS).write_text("{not json")
    assert prepare.source(args) == first


# ---- class 6: a run's own files are never read as its data

def test_a_run_folder_cache_and_swanlog_inside_the_data_folder_are_not_data(data_args, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "corpus.jsonl", [{"text": t} for t in TEXTS[:20]])
    out = data / "runs" / "demo"  # what a run leaves: its lock from the first start, checkpoints, final/, stats
    (out / "checkpoint-10").mkdir(parents=True)
    (out / "final").mkdir()
    (out / "zhpretrain.lock").write_text("")
    (out / "checkpoint-10" / "trainer_state.json").write_text(json.dumps({"log_history": []}))
    (out / "final" / "tokenizer.json").write_text(json.dumps({"model": {}}))
    (out / "data_stats.json").write_text(json.dumps({"train": {}}))
    log = data / "swanlog" / "run-20261201_171510-umbfjw82"
    (log / "files").mkdir(parents=True)
    (log / "files" / "swanlab-metadata.json").write_text("{}")
    (log / "files" / "requirements.txt").write_text("torch\n")
    cache = data / "cache" / "tokenizer-0123456789abcdef"
    cache.mkdir(parents=True)
    (cache / "tokenizer.json").write_text("{}")
    args = data_args(train_file=str(data), cache_dir=str(data / "cache"))
    key = prepare.source(args)
    assert [e["path"] for e in key["files"]] == [str(data / "corpus.jsonl")]
    assert "left out 7 files that a run wrote" in capsys.readouterr().out
    assert len(sides(args)) == 20  # what is read is what was keyed


def test_data_inside_the_cache_folder_is_still_data(data_args, tmp_path):
    data = tmp_path / "cache" / "downloads"
    data.mkdir(parents=True)
    write_jsonl(data / "corpus.jsonl", [{"text": t} for t in TEXTS[:5]])
    assert files.train_files(data_args(train_file=str(data), cache_dir=str(tmp_path / "cache")))[0] == [str(data / "corpus.jsonl")]


# ---- class 5, readers: every read error names the file and what to do

def corpus_bytes(n=20000) -> bytes:  # 2.6 MB: bzip2 decodes in blocks of 900 KB, so the first ones come out whole
    return "".join(json.dumps({"text": TEXTS[i % 400] * 3}, ensure_ascii=False) + "\n" for i in range(n)).encode()


@pytest.mark.parametrize("suffix,compress", [(".gz", gzip.compress), (".bz2", bz2.compress), (".xz", lzma.compress)])
def test_a_truncated_compressed_file_is_one_paragraph_naming_it(tmp_path, suffix, compress):
    whole = compress(corpus_bytes())
    path = tmp_path / f"c.jsonl{suffix}"
    path.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(UserError) as e:
        list(readers.read_texts([str(path)], None, False, readers.ReadStats()))
    message = str(e.value)
    assert message.startswith(f"{path} cannot be read after line ") and "truncated or damaged" in message


def test_a_truncated_file_stops_the_tokenizer_child_with_its_name_not_max_chars_advice(tmp_path):
    from zhpretrain.config import DataArguments, ModelArguments

    whole = gzip.compress(corpus_bytes())
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(UserError) as e:
        tokenizer.train_and_save(DataArguments(train_file=str(path)), ModelArguments(tokenizer_vocab_size=300,
                                 tokenizer_train_max_chars=10**8), tmp_path / "tok")
    assert str(path) in str(e.value) and "tokenizer_train_max_chars" not in str(e.value)


@pytest.mark.parametrize("fmt", ["jsonl", "json", "txt", "jsonl.gz"])
def test_invalid_utf8_names_the_file_and_where(tmp_path, fmt):
    good = "第一篇。".encode()
    bad = b"\xe7\xac\xff"  # a cut character
    body = {"jsonl": b'{"text": "' + good + b'"}\n{"text": "' + bad + b'"}\n',
            "json": b'[{"text": "' + good + b'"}, {"text": "' + bad + b'"}]',
            "txt": good + b"\n\n" + bad + b"\n"}[fmt.removesuffix(".gz")]
    path = tmp_path / f"c.{fmt}"
    path.write_bytes(gzip.compress(body) if fmt.endswith(".gz") else body)
    with pytest.raises(UserError, match=rf"^{path}: (line 2|invalid UTF-8 at byte offset \d+)"):
        list(readers.read_texts([str(path)], None, False, readers.ReadStats()))


def test_a_file_deleted_before_it_is_read_is_named(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": "甲。"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "乙。"}])
    found = files.find_files(str(tmp_path))
    texts = readers.read_texts(found, None, False, readers.ReadStats())
    assert next(texts)[0] == "甲。"
    b.unlink()
    with pytest.raises(UserError, match=rf"^{b} disappeared while it was being read \(at its start\)"):
        next(texts)
    assert a.exists()


def test_a_damaged_gzip_header_is_named(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(b"not gzip at all" * 10)
    with pytest.raises(UserError, match=rf"^{path} cannot be read at its start: .*truncated or damaged"):
        list(readers.read_texts([str(path)], None, False, readers.ReadStats()))


# ---- issue 18 item 7: the start-up estimate

def test_the_estimate_is_printed_once_before_the_cache_is_built(data_args, tmp_path, tok_folder, capsys):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in TEXTS])
    args = data_args(train_file=str(corpus), block_size=8)
    prepared(args, tok_folder)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("estimate:")]
    size = Path(corpus).stat().st_size  # 400 lines of ~70 bytes: ~24 KB
    assert len(lines) == 1 and f"from {size / 1000:.1f} KB of data" in lines[0] and "an estimate" in lines[0]
    prepared(args, tok_folder)
    assert "estimate:" not in capsys.readouterr().out  # the cache exists: nothing to build, nothing to estimate
