"""Trust every byte: damaged caches and checkpoints are never used and a run folder belongs to one run (hostile input,
impossible shapes and machine errors: test_trust_input.py)."""
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

import pretrain
from conftest import DEMO, run_pretrain
from test_resilience import finish, start, training_started
from zhpretrain.data import blocks, cache, files, tokenizer
from zhpretrain.run import checkpoint, folder, lock, resume
from zhpretrain.errors import UserError

TINY = ["--block_size", 64, "--per_device_train_batch_size", 8, "--eval_on_start", "false", "--logging_steps", 5,
        "--swanlab_mode", "disabled", "--dataloader_num_workers", 0]


def args(tmp: Path, out: str = "out", steps: int = 10, save: int = 5, *extra):
    return [*TINY, "--max_steps", steps, "--save_steps", save, "--eval_steps", steps, "--output_dir", tmp / out,
            "--cache_dir", tmp / "cache", *extra]


def refused(tmp_path, *argv) -> str:
    """Run pretrain.main in this process and return its UserError's message as one line."""
    with pytest.raises(UserError) as e:
        pretrain.main([*map(str, argv)])
    return " ".join(str(e.value).split())


def digests(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- 1. verify before use: caches

def fill(files: dict):
    def write(tmp: Path):
        for name, content in files.items():
            (tmp / name).write_bytes(content)
    return write


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
def test_a_damaged_cache_is_rebuilt_with_a_warning(tmp_path, damage):
    folder = tmp_path / "blocks-x"
    cache.once(folder, fill({"train.bin": bytes(range(256)) * 64, "meta.json": b"{}"}), builder=True, what="token cache")
    assert cache.verify(folder) is None
    target = folder / ("manifest.json" if damage == "manifest" else "train.bin")
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:8192])
    elif damage == "flip":
        raw = bytearray(target.read_bytes())
        raw[5000] ^= 1
        target.write_bytes(bytes(raw))
    else:
        target.unlink()
    assert cache.verify(folder) is not None
    calls = []
    with pytest.warns(UserWarning, match=r"token cache .*blocks-x is damaged \(.*\); rebuilding it"):
        cache.once(folder, lambda tmp: (calls.append(1), fill({"train.bin": b"new", "meta.json": b"{}"})(tmp)), True, "token cache")
    assert calls == [1] and (folder / "train.bin").read_bytes() == b"new" and cache.verify(folder) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocks-x"]  # the damaged copy is gone, no temp left


@pytest.mark.slow
def test_a_cut_train_bin_is_noticed_end_to_end(tmp_path):
    first = run_pretrain(*args(tmp_path, steps=2, save=2), cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:]
    stats = json.loads((tmp_path / "out" / "data_stats.json").read_text())
    [train_bin] = (tmp_path / "cache").glob("blocks-*/train.bin")
    train_bin.write_bytes(train_bin.read_bytes()[:train_bin.stat().st_size // 2])  # today: trains on half the blocks
    again = run_pretrain(*args(tmp_path, "out2", steps=2, save=2), cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-3000:]
    assert "is damaged (train.bin is" in again.stdout and "rebuilding it" in again.stdout
    assert json.loads((tmp_path / "out2" / "data_stats.json").read_text()) == stats


def test_temporary_folders_of_killed_builders_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale = tmp_path / f".blocks-a.tmp-{host}-{dead.pid}-xyz"
    live = tmp_path / f".blocks-b.tmp-{host}-{os.getpid()}-xyz"
    other_host = tmp_path / f".blocks-c.tmp-elsewhere-{dead.pid}-xyz"
    for p in (stale, live, other_host):
        p.mkdir()
        (p / "train.bin").write_bytes(b"x")
    cache.once(tmp_path / "blocks-d", fill({"a": b"1"}), builder=True, what="token cache")
    assert not stale.exists() and live.exists() and other_host.exists()


def test_a_waiting_rank_stops_with_the_builders_error_instead_of_waiting_forever(tmp_path):
    folder = tmp_path / "tokenizer-x"

    def broken(tmp):
        raise UserError("data.jsonl: line 7: malformed JSON.")

    errors = []

    def waiter():
        try:
            cache.once(folder, fill({}), builder=False, what="tokenizer cache")
        except UserError as e:
            errors.append(str(e))
    thread = threading.Thread(target=waiter)
    thread.start()
    with pytest.raises(UserError):
        cache.once(folder, broken, builder=True, what="tokenizer cache")
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert errors and "The process building the tokenizer cache" in errors[0] and "line 7: malformed JSON" in errors[0]


# ---- 1. verify before use: checkpoints

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 10-step run with checkpoints at 5 and 10."""
    tmp = tmp_path_factory.mktemp("finished")
    proc = run_pretrain(*args(tmp), cwd=tmp)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return tmp


def copy_run(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated weights", "flipped optimizer byte", "missing scheduler", "garbage optimizer"])
def test_checkpoint_problems_name_the_file(finished, tmp_path, damage):
    ck = copy_run(finished / "out" / "checkpoint-10", tmp_path / "checkpoint-10")
    assert checkpoint.checkpoint_problem(ck) is None
    if damage == "truncated weights":
        w = ck / "model.safetensors"
        w.write_bytes(w.read_bytes()[:1000])
        expected = "model.safetensors is 1,000 bytes"
    elif damage == "flipped optimizer byte":
        raw = bytearray((ck / "optimizer.pt").read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        (ck / "optimizer.pt").write_bytes(bytes(raw))
        expected = "optimizer.pt has other contents"
    elif damage == "missing scheduler":
        (ck / "scheduler.pt").unlink()
        expected = "scheduler.pt is missing"
    else:  # no manifest to compare with (a run killed just before writing it): the file itself must load
        (ck / checkpoint.MANIFEST).unlink()
        (ck / "optimizer.pt").write_bytes(b"not a torch file")
        expected = "optimizer.pt does not load"
    assert expected in checkpoint.checkpoint_problem(ck)


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_is_skipped_and_the_run_resumes_exactly(finished, tmp_path):
    out = copy_run(finished / "out", tmp_path / "out")
    copy_run(finished / "cache", tmp_path / "cache")
    weights = out / "checkpoint-10" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:len(weights.read_bytes()) // 2])
    proc = run_pretrain(*args(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stdout, proc.stdout[-3000:]
    assert "checkpoint-10 is incomplete or damaged (model.safetensors is" in proc.stdout
    assert "resuming from" in proc.stdout and "checkpoint-5" in proc.stdout.split("resuming from")[1].splitlines()[0]
    assert (out / "damaged-checkpoint-10").is_dir() and checkpoint.checkpoint_problem(out / "checkpoint-10") is None
    a, b = load_file(finished / "out" / "final" / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


# ---- 2. a run folder belongs to one run

@pytest.mark.slow
def test_a_second_run_into_a_training_folder_is_refused_at_once(tmp_path):
    first = start(args(tmp_path, steps=100000, save=100000), tmp_path)
    try:
        training_started(first)
        t = time.time()
        second = run_pretrain(*args(tmp_path, steps=100000, save=100000), cwd=tmp_path)
        assert second.returncode == 2 and "Traceback" not in second.stdout and time.time() - t < 60
        assert f"process {first.pid} on host {socket.gethostname()}" in second.stdout and "Another run is training" in second.stdout
        assert first.poll() is None  # the first run goes on
    finally:
        os.kill(first.pid, 2)
        out = finish(first, timeout=120)
    assert first.returncode == 130, out[-3000:]


@pytest.mark.slow
def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / lock.LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid,
                                                             "started": "2026-11-24 01:02:03", "command": "pretrain.py"}))
    proc = run_pretrain(*args(tmp_path, steps=1, save=1), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert f"was left by process {dead.pid} on host {socket.gethostname()}" in proc.stdout and "no longer running" in proc.stdout
    assert (tmp_path / "out" / lock.LOCK).read_text() == ""  # released cleanly at the end


def test_a_lock_held_by_a_live_process_refuses_the_run(tmp_path):
    import fcntl

    (tmp_path / "out").mkdir()
    with open(tmp_path / "out" / lock.LOCK, "w") as f:
        f.write(json.dumps({"host": "gpu-node-7", "pid": 4242, "started": "2026-11-24 01:02:03", "command": "pretrain.py"}))
        f.flush()
        fcntl.flock(f, fcntl.LOCK_EX)
        msg = refused(tmp_path, *args(tmp_path))
    assert "process 4242 on host gpu-node-7" in msg and "another --output_dir" in msg


@pytest.mark.slow
def test_grown_data_is_refused_then_continued_with_the_checkpoints_tokenizer(tmp_path):
    corpus = copy_run(DEMO, tmp_path / "corpus.jsonl")
    common = [*TINY, "--save_steps", 5, "--eval_steps", 5, "--output_dir", tmp_path / "out", "--cache_dir", tmp_path / "cache",
              "--train_file", corpus]
    first = run_pretrain(*common, "--max_steps", 5, cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:]
    tokenizer_before = blocks.tokenizer_digest(tokenizer.load(str(tmp_path / "out" / "checkpoint-5")))
    with open(corpus, "a", encoding="utf-8") as f:
        f.write(json.dumps({"text": "新加的文章。" * 200}, ensure_ascii=False) + "\n")
    again = run_pretrain(*common, "--max_steps", 10, cwd=tmp_path)
    assert again.returncode == 2 and "Traceback" not in again.stdout
    assert f"corpus.jsonl was {DEMO.stat().st_size:,} bytes, is now" in again.stdout and "max_steps: 5 -> 10" in again.stdout
    assert "--allow_resume_changes true" in again.stdout
    assert "tokenizer:" not in again.stdout  # refused before any tokenizer was trained
    go_on = run_pretrain(*common, "--max_steps", 10, "--allow_resume_changes", "true", cwd=tmp_path)
    assert go_on.returncode == 0, go_on.stdout[-3000:]
    assert "continuing checkpoint-5 with changed settings" in go_on.stdout and "(the one saved in" in go_on.stdout
    assert blocks.tokenizer_digest(tokenizer.load(str(tmp_path / "out" / "final"))) == tokenizer_before


@pytest.mark.slow
def test_a_finished_run_rerun_with_other_settings_is_refused_and_its_model_kept(finished, tmp_path):
    out = copy_run(finished / "out", tmp_path / "out")
    before = digests(out / "final")
    msg = refused(tmp_path, *args(tmp_path), "--learning_rate", 1e-4, "--seed", 7)
    assert "learning_rate: 0.0027 -> 0.0001" in msg and "seed: 42 -> 7" in msg and "new --output_dir" in msg  # the dial's 2.7e-3
    assert digests(out / "final") == before


@pytest.mark.slow
def test_a_changed_model_shape_is_refused_even_when_changes_are_allowed(finished, tmp_path):
    copy_run(finished / "out", tmp_path / "out")
    msg = refused(tmp_path, *args(tmp_path), "--config_overrides", "intermediate_size=256", "--allow_resume_changes", "true")
    assert "intermediate_size: 384 -> 256" in msg and "cannot be resumed this way" in msg


def test_folders_the_user_owns_are_refused(tmp_path, monkeypatch):
    assert "is the root folder" in refused(tmp_path, *args(tmp_path)[:-4], "--output_dir", "/")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    assert "is your home folder" in refused(tmp_path, *args(tmp_path)[:-4], "--output_dir", tmp_path / "home")
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "data_stats.json").write_text("my own file")
    (mine / "chapter1.md").write_text("...")
    before = digests(mine)
    msg = refused(tmp_path, *args(tmp_path, "thesis"))
    assert "already holds files that are not from a run of this project (chapter1.md, data_stats.json" in msg
    assert "--allow_existing_output_dir true" in msg and digests(mine) == before
    assert not (mine / lock.LOCK).exists()


@pytest.mark.slow
def test_an_existing_folder_is_written_into_when_allowed(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    proc = run_pretrain(*args(tmp_path, steps=1, save=1), "--allow_existing_output_dir", "true", cwd=tmp_path)
    assert proc.returncode == 0 and (tmp_path / "out" / "notes.txt").read_text() == "keep me"


def test_changes_are_listed_in_words_and_moved_files_are_the_same_data():
    entry = {"path": "/data/a.jsonl", "size": 100, "mtime_ns": 1, "sample": "x"}
    old = {"data": {"files": [entry], "split_seed": 1}, "training": {"learning_rate": 0.1}, "model": {"hidden_size": 8}}
    moved = {**old, "data": {**old["data"], "files": [{**entry, "path": "/mnt/a.jsonl", "mtime_ns": 2}]}}
    assert resume.changes(old, moved) == {}
    grown = {"data": {"files": [{**entry, "size": 250, "sample": "y"}], "split_seed": 2}, "training": {"learning_rate": 0.2},
             "model": {"hidden_size": 8}}
    assert resume.changes(old, grown) == {"data": ["files: /data/a.jsonl was 100 bytes, is now 250 bytes", "split_seed: 1 -> 2"],
                                          "training": ["learning_rate: 0.1 -> 0.2"]}
