"""Bad input ends with a one-paragraph message naming the file (and line or field) and what to do, never a traceback,
and damages nothing already written. Safety: no API key in logs or configs."""
import hashlib
import json
import os

import pytest

import pretrain
import swanlab_log
from conftest import DEMO, run_pretrain
from zhpretrain.errors import UserError

# Distinct texts: the split is by text, so copies of one text would all land on one side and leave no evaluation split.
GOOD = [{"id": str(i), "title": f"t{i}", "tags": "", "text": f"第{i}篇：" + "陕西省是中国的一个省。" * 5} for i in range(60)]


def fail(tmp_path, *args) -> str:
    """Run pretrain.main in this process and return the UserError's message."""
    argv = [*map(str, args), "--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"),
            "--swanlab_mode", "disabled", "--max_steps", "2", "--tokenizer_vocab_size", "300"]
    with pytest.raises(UserError) as e:
        pretrain.main(argv)
    return " ".join(str(e.value).split())


def lines(path, records_or_lines):
    path.write_bytes(b"".join(r if isinstance(r, bytes) else (json.dumps(r, ensure_ascii=False) + "\n").encode()
                              for r in records_or_lines))
    return path


def test_directory_without_data_files(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.md").write_text("x")
    assert "is a directory with no data files in it" in fail(tmp_path, "--train_file", tmp_path / "d")


def test_malformed_json_line_names_file_and_line(tmp_path):
    f = lines(tmp_path / "bad.jsonl", GOOD[:3] + [b'{"text": "oops\n'] + GOOD[3:])
    msg = fail(tmp_path, "--train_file", f)
    assert f"{f}: line 4: malformed JSON" in msg and "--skip_bad_records" in msg


@pytest.mark.slow  # over 8 s on 2 quiet cores: `make test` stays under 5 minutes; CI runs it
def test_skip_bad_records_skips_and_counts(tmp_path):
    f = lines(tmp_path / "bad.jsonl", GOOD[:30] + [b'{"text": "oops\n', b"\xff\xfe{}\n"] + GOOD[30:])
    proc = run_pretrain("--train_file", f, "--skip_bad_records", "true", "--max_steps", 1, "--block_size", 16,
                        "--tokenizer_vocab_size", 300, "--output_dir", tmp_path / "out", "--cache_dir", tmp_path / "cache",
                        "--swanlab_mode", "disabled", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "read 60 records: 0 empty texts dropped, 2 bad records skipped" in proc.stdout


@pytest.mark.slow  # over 8 s on 2 quiet cores: `make test` stays under 5 minutes; CI runs it
def test_invalid_utf8_gives_file_and_byte_offset(tmp_path):
    head = (json.dumps(GOOD[0], ensure_ascii=False) + "\n").encode()
    f = lines(tmp_path / "bad.jsonl", [head, b'{"text": "\xe9\x99"}\n'] + GOOD[1:])
    assert f"{f}: line 2: invalid UTF-8 at byte offset {len(head) + 10}" in fail(tmp_path, "--train_file", f)
    g = tmp_path / "bad.json"
    g.write_bytes(b'[{"text": "ok"}, {"text": "\xff"}]')
    assert f"{g}: invalid UTF-8 at byte offset 27" in fail(tmp_path, "--train_file", g)


def test_truncated_json_array(tmp_path):
    f = tmp_path / "cut.json"
    f.write_text(json.dumps(GOOD, ensure_ascii=False, indent=1)[:-500], encoding="utf-8")
    msg = fail(tmp_path, "--train_file", f)
    assert f"{f}: line" in msg and "truncated or malformed" in msg


def test_no_text_column_lists_the_columns(tmp_path):
    f = lines(tmp_path / "cols.jsonl", [{"title": "a", "body": "b"}])
    assert "cols.jsonl: line 1: no text column; found ['body', 'title']. Pass --text_column NAME" in fail(tmp_path, "--train_file", f)


@pytest.mark.slow  # over 8 s on 2 quiet cores: `make test` stays under 5 minutes; CI runs it
def test_empty_file_and_only_empty_texts(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    assert f"{tmp_path / 'empty.jsonl'} is empty" in fail(tmp_path, "--train_file", tmp_path / "empty.jsonl")
    f = lines(tmp_path / "blank.jsonl", [{"text": ""}, {"text": "  "}])
    assert "Every one of the 2 records" in fail(tmp_path, "--train_file", f)


def test_eval_split_too_small_says_how_many_tokens(tmp_path):
    f = lines(tmp_path / "short.jsonl", GOOD)
    msg = fail(tmp_path, "--train_file", f, "--validation_split_documents", 1, "--block_size", 1000)
    assert "The evaluation split has" in msg and "tokens in 1 documents, fewer than one block of 1000" in msg


def test_block_size_and_vocabulary_limits(tmp_path):
    msg = fail(tmp_path, "--block_size", 4096)
    assert "block_size 4096 is larger than the model's position limit 1024" in msg
    msg = fail(tmp_path, "--config_overrides", "vocab_size=64")
    assert "tokenizer has 300 tokens but the model's vocab_size is 64" in msg


def test_unwritable_output_dir(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="output_dir '.*file/sub' cannot be written"):
        pretrain.main(["--output_dir", str(tmp_path / "file" / "sub"), "--swanlab_mode", "disabled"])


@pytest.mark.slow  # over 8 s on 2 quiet cores: `make test` stays under 5 minutes; CI runs it
def test_a_failed_run_damages_nothing_written_before(tmp_path):
    data = lines(tmp_path / "data.jsonl", GOOD)
    args = ["--train_file", data, "--max_steps", 2, "--save_steps", 2, "--block_size", 16, "--tokenizer_vocab_size", 300,
            "--output_dir", tmp_path / "out", "--cache_dir", tmp_path / "cache", "--swanlab_mode", "disabled"]
    assert run_pretrain(*args, cwd=tmp_path).returncode == 0

    def snapshot():
        return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(tmp_path.rglob("*"))
                if p.is_file() and p != data and p.name != "data-digests.json"}  # the memo of data digests learns the new one
    before = snapshot()
    lines(data, GOOD + [b"{broken\n"])  # the data changes: a new cache is built, and fails half-way
    proc = run_pretrain(*args, "--allow_resume_changes", "true", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout and "line 61: malformed JSON" in proc.stdout
    after = snapshot()
    assert {name: after.get(name) for name in before} == before  # every file written before is still there, unchanged


@pytest.mark.slow  # over 8 s on 2 quiet cores: `make test` stays under 5 minutes; CI runs it
def test_swanlab_cloud_unreachable_warns_logs_locally_and_keeps_the_key_secret(tmp_path):
    secret = "sentinel-key-0123456789abcdef"
    env = {**os.environ, "SWANLAB_API_KEY": secret}
    proc = run_pretrain("--train_file", DEMO, "--max_steps", 2, "--eval_steps", 2, "--block_size", 64, "--swanlab_mode", "cloud",
                        "--swanlab_log_dir", tmp_path / "swanlog", "--output_dir", tmp_path / "out", "--cache_dir",
                        tmp_path / "cache", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "SwanLab cloud is unavailable" in proc.stdout and "logging locally" in proc.stdout
    [run] = swanlab_log.run_dirs(tmp_path / "swanlog")
    assert "eval/loss" in swanlab_log.scalars(run)
    assert secret not in proc.stdout
    for path in [*tmp_path.rglob("*")]:
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_a_hub_dataset_offline_fails_at_once_and_says_what_to_do(tmp_path):
    from huggingface_hub import constants

    from zhpretrain.net import reachable

    if reachable(constants.ENDPOINT):
        pytest.skip("the hub is reachable here")
    msg = fail(tmp_path, "--dataset_name", "fjcanyue/wikipedia-zh-cn")
    assert "the Hugging Face hub (https://huggingface.co) cannot be reached" in msg and "--train_file" in msg


def test_an_unbuildable_model_shape_and_an_unwritable_cache_dir(tmp_path):
    msg = fail(tmp_path, "--model_config", "configs/models/gpt2-small.json", "--config_overrides", "n_embd=100,n_layer=1")
    assert "hidden_size 100 is not a multiple of num_attention_heads 8" in msg and "nothing was tokenized" in msg
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cache_dir '.*file/sub' cannot be written"):
        pretrain.main(["--cache_dir", str(tmp_path / "file" / "sub"), "--output_dir", str(tmp_path / "out"), "--swanlab_mode", "disabled"])


def test_a_lone_surrogate_escape_is_a_bad_record_named_by_line(tmp_path):
    # JSON may spell a half of a UTF-16 pair alone ("\ud800"); Python's json accepts it, but it is no character, and
    # the tokenizer used to crash on it ("surrogates not allowed") without naming the file or the record.
    bad = b'{"id": "x", "title": "t", "text": "\\u9655\\u897f\\ud800\\u7701"}\n'
    f = lines(tmp_path / "bad.jsonl", GOOD[:5] + [bad] + GOOD[5:])
    msg = fail(tmp_path, "--train_file", f)
    assert f"{f}: line 6: 'text' holds a lone surrogate" in msg and "--skip_bad_records" in msg
    g = tmp_path / "bad.json"
    g.write_bytes(b"[\n" + b",\n".join([json.dumps(r, ensure_ascii=False).encode() for r in GOOD[:2]] + [bad.strip()])
                  + b"\n]\n")
    assert f"{g}: line 4: 'text' holds a lone surrogate" in fail(tmp_path, "--train_file", g)
