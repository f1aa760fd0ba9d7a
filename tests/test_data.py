"""Finding files, reading every format lazily, the text column, empty texts, and the split."""
import json

import pytest

from conftest import DEMO, shared, write_jsonl
from zhpretrain.data import files, readers, split
from zhpretrain.errors import UserError

DOCS = [{"id": str(i), "title": f"t{i}", "tags": "", "text": f"第{i}篇文章。\u2028仍是同一行。"} for i in range(50)]


def texts(files, **kw):
    stats = readers.ReadStats()
    return [t for t, *_ in readers.read_texts(files, kw.pop("column", None), kw.pop("skip", False), stats)], stats


def test_jsonl_and_json_array_read_the_same_records(tmp_path):
    jsonl = write_jsonl(tmp_path / "a.jsonl", DOCS)
    array = tmp_path / "a.json"
    array.write_text(json.dumps(DOCS, ensure_ascii=False, indent=1), encoding="utf-8")
    assert texts([str(jsonl)])[0] == texts([str(array)])[0] == [d["text"] for d in DOCS]


def test_json_array_is_read_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "CHUNK", 64)  # elements straddle many chunk boundaries
    array = tmp_path / "a.json"
    array.write_text(json.dumps(DOCS, ensure_ascii=False), encoding="utf-8")
    assert texts([str(array)])[0] == [d["text"] for d in DOCS]


def test_shared_array_matches_its_jsonl_prefix():
    array = shared("zhwiki-sample.json")
    got, _ = texts([str(array)])
    with open(shared("zhwiki-sample.jsonl"), encoding="utf-8", newline="\n") as f:
        want = [json.loads(next(f))["text"] for _ in range(len(got))]
    assert len(got) == 1044 and got == want


def test_parquet_and_txt(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["甲文。", "", "乙文。"]}), tmp_path / "a.parquet")
    got, stats = texts([str(tmp_path / "a.parquet")])
    assert got == ["甲文。", "乙文。"] and stats.empty == 1
    (tmp_path / "a.txt").write_text("第一段\n续行\n\n\n第二段\n", encoding="utf-8")
    assert texts([str(tmp_path / "a.txt")])[0] == ["第一段\n续行", "第二段"]


def test_text_column_detection_and_override(tmp_path):
    f = write_jsonl(tmp_path / "c.jsonl", [{"completion": "补全。", "body": "正文。"}])
    assert texts([str(f)])[0] == ["补全。"]
    assert texts([str(f)], column="body")[0] == ["正文。"]
    g = write_jsonl(tmp_path / "d.jsonl", [{"title": "x", "body": "y"}])
    with pytest.raises(UserError, match=r"d.jsonl: line 1: no text column; found \['body', 'title'\]"):
        texts([str(g)])


def test_empty_texts_are_dropped_and_counted(tmp_path):
    f = write_jsonl(tmp_path / "e.jsonl", [{"text": "有。"}, {"text": ""}, {"text": "  \n"}, {"text": None}])
    got, stats = texts([str(f)])
    assert got == ["有。"] and (stats.records, stats.empty) == (4, 3)


def test_find_files(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", DOCS[:1])
    write_jsonl(tmp_path / "a.jsonl", DOCS[:1])
    assert files.find_files(str(tmp_path / "*.jsonl")) == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    assert files.find_files(str(tmp_path)) == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    with pytest.raises(UserError, match="matches no file"):
        files.find_files(str(tmp_path / "*.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="directory with no data files"):
        files.find_files(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="does not exist"):
        files.find_files(str(tmp_path / "nope.jsonl"))


def test_split_is_reproducible_disjoint_and_near_the_percentage(data_args):
    args = data_args(train_file=str(DEMO), validation_split_percentage=20, split_seed=1)
    first = list(split.documents(args, readers.ReadStats()))
    assert first == list(split.documents(args, readers.ReadStats()))
    test = [t for s, t in first if s == "test"]
    train = [t for s, t in first if s == "train"]
    assert len(test) + len(train) == len(first) and not set(test) & set(train)
    assert 0.1 < len(test) / len(first) < 0.3
    other = [t for s, t in split.documents(data_args(train_file=str(DEMO), validation_split_percentage=20, split_seed=2),
                                          readers.ReadStats()) if s == "test"]
    assert other != test


def test_split_by_document_count_and_validation_file(data_args, tmp_path):
    args = data_args(train_file=str(DEMO), validation_split_documents=7)
    assert sum(s == "test" for s, _ in split.documents(args, readers.ReadStats())) == 7
    val = write_jsonl(tmp_path / "val.jsonl", [{"text": "验证。"}])
    docs = list(split.documents(data_args(train_file=str(DEMO), validation_file=str(val)), readers.ReadStats()))
    assert [t for s, t in docs if s == "test"] == ["验证。"]
    assert sum(s == "train" for s, _ in docs) == sum(1 for _ in open(DEMO, encoding="utf-8"))


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "txt"])
def test_reading_resumes_at_any_yielded_position(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(readers, "CHUNK", 256)
    docs = [d["text"].replace("\u2028", "，") + "数" * (i * 37 % 300) for i, d in enumerate(DOCS)]
    files = []
    for part in range(2):
        chunk = docs[part * 25:(part + 1) * 25]
        path = tmp_path / f"p{part}.{fmt}"
        if fmt == "jsonl":
            write_jsonl(path, [{"text": t} for t in chunk])
        elif fmt == "json":
            path.write_text(json.dumps([{"text": t} for t in chunk], ensure_ascii=False, indent=2), encoding="utf-8")
        elif fmt == "txt":
            path.write_text("\n\n".join(chunk) + "\n", encoding="utf-8")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"text": chunk}), path, row_group_size=7)
        files.append(str(path))
    everything = list(readers.read_texts(files, None, False, readers.ReadStats()))
    assert [t for t, *_ in everything] == docs
    for k in (1, 13, 25, 38, 49):
        _, index, offset = everything[k]
        again = list(readers.read_texts(files, None, False, readers.ReadStats(), position=(index, offset)))
        assert again == everything[k:]


def test_missing_shared_data_fails_under_ci_and_skips_elsewhere(monkeypatch, tmp_path):
    import conftest

    monkeypatch.setattr(conftest, "SHARED", tmp_path)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        conftest.shared("zhwiki-sample.jsonl")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        conftest.shared("zhwiki-sample.jsonl")


def test_a_lone_surrogate_is_skipped_and_counted_with_skip_bad_records(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_bytes(b'{"text": "ok"}\n{"text": "a\\udfffb"}\n{"text": "\\ud83d\\ude00 a pair is one character"}\n')
    got, stats = texts([str(f)], skip=True)
    assert got == ["ok", "\U0001F600 a pair is one character"] and stats.skipped == 1 and stats.records == 2
