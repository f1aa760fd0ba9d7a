"""Never lose a run: exact resume after SIGKILL, partial checkpoints skipped, clean stop on signals, NaN stops."""
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, run_pretrain, start_pretrain as start

TINY = ["--block_size", 64, "--per_device_train_batch_size", 8, "--eval_on_start", "false", "--logging_steps", 5,
        "--swanlab_mode", "disabled", "--dataloader_num_workers", 0]


def common(tmp: Path, out: str, steps: int = 30, save: int = 10):
    return [*TINY, "--max_steps", steps, "--save_steps", save, "--eval_steps", steps, "--output_dir", tmp / out,
            "--cache_dir", tmp / "cache"]


def wait_output(proc: subprocess.Popen, pattern: str, timeout: float = 240) -> None:
    """Wait until the output matches pattern (polling what the reader thread collected), or the process ends."""
    deadline = time.time() + timeout
    while not re.search(pattern, "".join(proc.output)):
        assert proc.poll() is None and time.time() < deadline, "".join(proc.output)[-3000:]
        time.sleep(0.05)


def training_started(proc: subprocess.Popen, timeout: float = 240) -> None:
    """Wait for the progress bar to count a finished step: the run is inside trainer.train()'s loop."""
    wait_output(proc, r"\b[1-9]\d*/100000 \[", timeout)


def finish(proc: subprocess.Popen, timeout: float) -> str:
    proc.wait(timeout=timeout)
    proc.reader.join(timeout=10)
    return "".join(proc.output)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"process ended before {path} appeared:\n{''.join(proc.output)[-3000:]}"
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def final_eval_loss(out: Path) -> float:
    states = sorted(out.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    return [h for h in json.loads(states[-1].read_text())["log_history"] if "eval_loss" in h][-1]["eval_loss"]


@pytest.mark.slow
@pytest.mark.parametrize("streaming", [False, True], ids=["cached", "streaming"])
def test_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path, streaming):
    extra = ["--streaming", "true"] if streaming else []
    straight = run_pretrain(*common(tmp_path, "straight"), *extra, cwd=tmp_path)
    assert straight.returncode == 0, straight.stdout[-3000:]

    proc = start([*common(tmp_path, "killed"), *extra], tmp_path)
    wait_for(tmp_path / "killed" / "checkpoint-10" / "trainer_state.json", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    finish(proc, timeout=30)
    assert not (tmp_path / "killed" / "final").exists()
    # A checkpoint the dying process was still writing: weights there, trainer_state.json not yet.
    partial = tmp_path / "killed" / "checkpoint-15"
    partial.mkdir(exist_ok=True)
    (partial / "model.safetensors").write_bytes(b"half")

    resumed = run_pretrain(*common(tmp_path, "killed"), *extra, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "checkpoint-15 is incomplete" in resumed.stdout and "resuming from" in resumed.stdout
    assert "checkpoint-10" in resumed.stdout.split("resuming from")[1].splitlines()[0]
    assert abs(final_eval_loss(tmp_path / "killed") - final_eval_loss(tmp_path / "straight")) < 1e-4
    a = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "final" / "model.safetensors")
    if streaming:  # the stream's position came back from the checkpoint, not from replaying skipped batches
        assert (tmp_path / "killed" / "checkpoint-30" / "stream_rank0.json").is_file()
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


@pytest.mark.parametrize("sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_a_checkpoint_and_says_how_to_continue(tmp_path, sig):
    proc = start(common(tmp_path, "out", steps=100000, save=100000), tmp_path)
    training_started(proc)
    sent = time.time()
    os.kill(proc.pid, sig)
    out = finish(proc, timeout=60)
    assert proc.returncode == 130, out[-3000:]
    assert time.time() - sent < 20 and "Traceback" not in out
    step = int(out.split("stopped at step ")[1].split(";")[0])
    checkpoint = tmp_path / "out" / f"checkpoint-{step}"
    assert step > 0 and json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == step
    assert "Run the same command to continue" in out


@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once(tmp_path):
    # 40 micro-batches per step: the first Ctrl-C waits seconds for the step to end, and the second one cuts it short.
    proc = start([*common(tmp_path, "out", steps=100000, save=100000), "--gradient_accumulation_steps", 40], tmp_path)
    training_started(proc)
    os.kill(proc.pid, signal.SIGINT)
    wait_output(proc, "stopping: saving a checkpoint", 30)  # the first one was handled: now a person presses again
    os.kill(proc.pid, signal.SIGINT)
    out = finish(proc, timeout=30)
    assert proc.returncode == 130 and "second Ctrl-C: exiting now" in out


@pytest.mark.slow  # over 8 s on 2 quiet cores: `make test` stays under 5 minutes; CI runs it
def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    # A huge learning rate without clipping: the weights turn NaN at step 2.
    args = [*common(tmp_path, "out", steps=12, save=1), "--learning_rate", 1e4, "--max_grad_norm", 0, "--warmup_steps", 0]
    proc = run_pretrain(*args, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout
    assert "became NaN or infinite at step 2" in proc.stdout and "checkpoint-1" in proc.stdout
    weights = load_file(tmp_path / "out" / "checkpoint-1" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (tmp_path / "out" / "checkpoint-2").exists()


@pytest.mark.slow
def test_resume_with_another_global_batch_is_refused_with_what_to_change(tmp_path):
    first = run_pretrain(*common(tmp_path, "out", steps=5, save=5), cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:]
    digest = hashlib.sha256((tmp_path / "out" / "checkpoint-5" / "model.safetensors").read_bytes()).hexdigest()
    # Training on to step 10 changes max_steps, which the run's identity guards: allowed explicitly here.
    more = ["--allow_resume_changes", "true"]
    again = run_pretrain(*common(tmp_path, "out", steps=10, save=5), *more, "--per_device_train_batch_size", 4, cwd=tmp_path)
    assert again.returncode == 2 and "Traceback" not in again.stdout
    assert "1 processes x 8 per device x 1 accumulation = 8 sequences of 64 tokens" in again.stdout
    assert "1 processes x 4 per device x 1 accumulation = 4 sequences" in again.stdout
    assert hashlib.sha256((tmp_path / "out" / "checkpoint-5" / "model.safetensors").read_bytes()).hexdigest() == digest
    # The same global batch split differently (4 x 2 accumulation) resumes.
    same = run_pretrain(*common(tmp_path, "out", steps=10, save=5), *more, "--per_device_train_batch_size", 4,
                        "--gradient_accumulation_steps", 2, cwd=tmp_path)
    assert same.returncode == 0 and "resuming from" in same.stdout, same.stdout[-3000:]


@pytest.mark.slow  # over 8 s on 2 quiet cores: `make test` stays under 5 minutes; CI runs it
def test_ctrl_c_before_training_exits_cleanly(tmp_path):
    proc = start(common(tmp_path, "out", steps=100000, save=100000), tmp_path)
    deadline = time.time() + 120
    while "preset:" not in "".join(proc.output):  # parsing done, the data stage is next
        assert proc.poll() is None and time.time() < deadline, "".join(proc.output)[-3000:]
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)
    out = finish(proc, timeout=60)
    assert proc.returncode == 130 and "Traceback" not in out, out[-3000:]
    assert "interrupted before training started" in out
