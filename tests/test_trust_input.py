"""Trust every byte, continued: hostile and odd input is bounded, impossible shapes are refused before training, and
machine errors (a full disk, a failed write, a read-only folder, NaN on two processes, Ctrl-C while tokenizing) end in
one clear paragraph that keeps what was written."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, run_pretrain, write_jsonl
from test_resilience import finish, start
from test_trust import args, refused
from zhpretrain.config import ModelArguments
from zhpretrain.data import files, prepare, readers, tokenizer
from zhpretrain.errors import UserError
from zhpretrain.model import build as model
from zhpretrain.run import checkpoint

# ---- 3. hostile and odd input, bounded

def test_data_directory_rule_skips_what_is_not_data_and_reads_compressed_files(tmp_path):
    import bz2
    import gzip
    import lzma

    d = tmp_path / "ds"
    (d / "sub" / ".git").mkdir(parents=True)
    records = [{"text": f"第{i}篇。"} for i in range(5)]
    raw = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    (d / "a.jsonl").write_bytes(raw)
    (d / "b.jsonl.gz").write_bytes(gzip.compress(raw))
    (d / "sub" / "c.json.bz2").write_bytes(bz2.compress(json.dumps(records, ensure_ascii=False).encode()))
    (d / "sub" / "d.txt.xz").write_bytes(lzma.compress("第一段。\n\n第二段。\n".encode()))
    for name in ("LICENSE.txt", "README.md", "dataset_info.json", ".hidden.jsonl", "sub/.git/x.json", "notes.csv"):
        (d / name).write_text("not data")
    paths, skipped = files.data_files(str(d))
    assert [Path(p).relative_to(d).as_posix() for p in paths] == ["a.jsonl", "b.jsonl.gz", "sub/c.json.bz2", "sub/d.txt.xz"]
    assert sorted(Path(p).relative_to(d).as_posix() for p in skipped) == \
        [".hidden.jsonl", "LICENSE.txt", "README.md", "dataset_info.json", "notes.csv", "sub/.git/x.json"]
    texts = [t for t, *_ in readers.read_texts(paths, None, False, readers.ReadStats())]
    assert texts == [r["text"] for r in records] * 3 + ["第一段。", "第二段。"]


def test_the_rule_looks_only_below_the_folder_given_and_a_named_file_is_read(tmp_path):
    # Hub snapshots live under ~/.cache: a hidden folder *above* what the user points at must not hide the data.
    hidden_home = tmp_path / ".cache" / "hub"
    for name in ("a/x.jsonl", "b/x.jsonl", "b/.partial/x.jsonl"):
        (hidden_home / name).parent.mkdir(parents=True, exist_ok=True)
        (hidden_home / name).write_text('{"text": "文"}\n')
    assert files.find_files(str(hidden_home / "*" / "x.jsonl")) == [str(hidden_home / "a/x.jsonl"), str(hidden_home / "b/x.jsonl")]
    paths, skipped = files.data_files(str(hidden_home))  # hidden folders *below* it are still skipped
    assert paths == [str(hidden_home / "a/x.jsonl"), str(hidden_home / "b/x.jsonl")] and skipped == [str(hidden_home / "b/.partial/x.jsonl")]
    named = hidden_home / ".only.jsonl"
    named.write_text('{"text": "文"}\n')
    assert files.find_files(str(named)) == [str(named)]


def test_a_zstd_file_without_zstandard_is_refused_by_name(tmp_path):
    import importlib.util

    if importlib.util.find_spec("zstandard") is not None:
        pytest.skip("zstandard is installed: .zst files are read")
    f = tmp_path / "x.jsonl.zst"
    f.write_bytes(b"\x28\xb5\x2f\xfd")
    with pytest.raises(UserError, match=r"x.jsonl.zst is zstd-compressed .* `pip install zstandard`"):
        files.find_files(str(f))


@pytest.mark.slow
def test_an_enormous_document_is_bounded_and_its_dominance_reported(tmp_path):
    normal = [{"text": "陕西省是中国的一个省，省会西安。" * 20} for _ in range(200)]
    blob = {"text": "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(3_000_000))}  # 3 M characters, no break
    train = write_jsonl(tmp_path / "train.jsonl", normal[:150] + [blob])
    val = write_jsonl(tmp_path / "val.jsonl", normal[150:] + [blob])
    t = time.time()
    proc = run_pretrain(*args(tmp_path, steps=1, save=1), "--train_file", train, "--validation_file", val,
                        "--tokenizer_vocab_size", 2000, "--max_eval_samples", 4, cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert time.time() - t < 300
    assert "warning: one document holds 9" in proc.stdout and "of the evaluation text" in proc.stdout


# ---- 4. a model that cannot work is refused before training

@pytest.mark.parametrize("shape,overrides,expected", [
    ("llama-small.json", "hidden_size=130,num_attention_heads=4", "hidden_size 130 is not a multiple of num_attention_heads 4"),
    ("qwen2-demo.json", "hidden_size=130", "hidden_size 130 is not a multiple of num_attention_heads 4"),
    ("qwen2-demo.json", "num_key_value_heads=3", "num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
    ("gpt2-small.json", "n_embd=100", "hidden_size 100 is not a multiple of num_attention_heads 8"),
])
def test_impossible_shapes_are_refused_before_tokenizing(tmp_path, shape, overrides, expected):
    msg = refused(tmp_path, *args(tmp_path), "--model_config", f"configs/models/{shape}", "--config_overrides", overrides)
    assert expected in msg and "nothing was tokenized or trained yet" in msg
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("overrides", ["num_hidden_layers=6,hidden_size=256", "num_hidden_layers=2"])
def test_depth_overrides_keep_layer_types_consistent_and_the_model_saves(tmp_path, overrides):
    margs = ModelArguments(model_config=str(REPO / "configs/models/qwen2-demo.json"), config_overrides=overrides)
    config = model.check_shape(margs, 64)
    layers = int(overrides.split("num_hidden_layers=")[1].split(",")[0])
    assert config.num_hidden_layers == layers and config.layer_types == ["full_attention"] * layers
    built = model.build_model(config, seed=0)
    assert len(built.model.layers) == layers
    built.save_pretrained(tmp_path / "m")  # the first save is where a stale layer_types failed, hours into a run
    assert json.loads((tmp_path / "m" / "config.json").read_text())["num_hidden_layers"] == layers


# ---- 5. errors from the machine

def small_disk(tmp_path: Path, megabytes: int) -> Path:
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs under CI: {proc.stderr!r}")
        pytest.skip("mounting a small file system needs root")
    return mount


def unmount(mount: Path) -> None:
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_too_little_disk_for_a_checkpoint_stops_before_writing_with_what_was_kept(tmp_path):
    disk = small_disk(tmp_path, 16)  # room for the first checkpoint (9.8 MB: Muon + AdamW), not for a second beside it
    try:
        proc = run_pretrain(*args(tmp_path, steps=4, save=1)[:-4], "--output_dir", disk / "out", "--cache_dir", tmp_path / "cache",
                            "--save_total_limit", 5, cwd=tmp_path)
        assert proc.returncode == 2 and "Traceback" not in proc.stdout, proc.stdout[-3000:]
        assert "Not enough disk space to write checkpoint-2" in proc.stdout
        assert f"the newest complete checkpoint is {disk / 'out' / 'checkpoint-1'}" in proc.stdout
        assert checkpoint.checkpoint_problem(disk / "out" / "checkpoint-1") is None
        assert not (disk / "out" / "checkpoint-2").exists()
    finally:
        unmount(disk)


@pytest.mark.slow
def test_a_write_that_fails_mid_checkpoint_is_one_paragraph(tmp_path):
    # A file-size limit makes the write of optimizer.pt (5.55 MB: Muon + AdamW) fail after model.safetensors (4.47 MB) was written.
    code = (f"import resource, runpy, sys; sys.path.insert(0, {str(REPO)!r}); resource.setrlimit(resource.RLIMIT_FSIZE, (5_000_000, 5_000_000)); "
            f"sys.argv = ['pretrain.py'] + sys.argv[1:]; runpy.run_path({str(REPO / 'pretrain.py')!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args(tmp_path, steps=2, save=1))], cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout, proc.stdout[-3000:]
    assert f"Writing {tmp_path / 'out' / 'checkpoint-1'} failed" in proc.stdout
    assert "no complete checkpoint was written yet" in proc.stdout and "run the same command" in proc.stdout


def test_a_read_only_output_dir_is_refused_at_start(tmp_path):
    disk = small_disk(tmp_path, 4)
    try:
        (disk / "out").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        msg = refused(tmp_path, *args(tmp_path)[:-4], "--output_dir", disk / "out", "--cache_dir", tmp_path / "cache")
        assert "cannot be written (Read-only file system)" in msg
    finally:
        unmount(disk)


@pytest.mark.slow
def test_nan_on_two_processes_stops_both_ranks_at_the_same_step(tmp_path):
    from test_distributed import launch

    proc = launch(REPO / "pretrain.py", *args(tmp_path, steps=12, save=1), "--learning_rate", 1e4, "--max_grad_norm", 0,
                  "--warmup_steps", 0, "--per_device_train_batch_size", 4, cwd=tmp_path)
    assert proc.returncode != 0
    assert "became NaN or infinite at step 2" in proc.stdout, proc.stdout[-3000:]
    weights = load_file(tmp_path / "out" / "checkpoint-1" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values()) and not (tmp_path / "out" / "checkpoint-2").exists()


@pytest.mark.slow
def test_ctrl_c_during_tokenization_exits_at_once_and_leaves_no_cache(tmp_path):
    texts = ["".join(chr(0x4E00 + (i * 31 + j * 7) % 20000) for j in range(5000)) for i in range(3000)]  # 15 M characters
    corpus = write_jsonl(tmp_path / "big.jsonl", [{"text": t} for t in texts])
    tokenizer.train(iter(texts[:100]), vocab_size=3000, max_chars=10**6).save_pretrained(tmp_path / "tok")
    proc = start(args(tmp_path, steps=1, save=1) + ["--train_file", corpus, "--tokenizer_name_or_path", tmp_path / "tok"], tmp_path)
    deadline = time.time() + 120
    while "tokenizing: " not in "".join(proc.output):  # the first batch is tokenized: 15 M characters are far from done
        assert proc.poll() is None and time.time() < deadline, "".join(proc.output)[-3000:]
        time.sleep(0.05)
    sent = time.time()
    os.kill(proc.pid, 2)
    out = finish(proc, timeout=60)
    assert proc.returncode == 130 and "Traceback" not in out, out[-3000:]
    assert time.time() - sent < 15
    assert "interrupted before training started" in out
    # No cache, no temporary folder: only the memo of the data files' digests (complete, written atomically).
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name != prepare.DIGESTS] == []
