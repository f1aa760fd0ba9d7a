"""The wall-clock budget (--max_train_minutes): the warmup-stable-decay schedule, a real run ending inside its budget with
the schedule completed, evaluation and saving kept out of the budget, and a killed run resuming the same budget.

Timing: the runs use one CPU thread (OMP_NUM_THREADS=1). On a shared two-core machine torch's default two threads
contend with other processes and single steps then take seconds; one thread keeps step times steady enough to check
a budget of a few seconds. The slack allowed past the budget is stated where it is checked."""
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

import swanlab_log
from conftest import REPO, start_pretrain
from zhpretrain import config
from zhpretrain.run.checkpoint import BUDGET
from zhpretrain.train import budget
from zhpretrain.train.budget import lr_factor
from zhpretrain.errors import UserError

PEAK, WARMUP = 2e-3, 10
TINY = ["--block_size", 64, "--per_device_train_batch_size", 8, "--eval_on_start", "false", "--swanlab_mode", "disabled",
        "--dataloader_num_workers", 0, "--max_eval_samples", 16, "--max_new_tokens", 4, "--disable_tqdm", "true",
        "--learning_rate", PEAK, "--warmup_steps", WARMUP, "--max_steps", 100000, "--logging_steps", 1]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TIME_LINE = re.compile(r"^time: training (\d+:\d\d) of a (\d+:\d\d) budget, evaluation (\d+:\d\d), saving (\d+:\d\d); "
                       r"before training \(start-up, data, tokenizer, model\) \d+:\d\d", re.M)


def budget_args(tmp: Path, minutes: float, out: str = "out", save: int = 100000, evals: int = 100000, *extra):
    return [*TINY, "--max_train_minutes", minutes, "--save_steps", save, "--eval_steps", evals,
            "--output_dir", tmp / out, "--cache_dir", tmp / "cache", *extra]


def run(args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "pretrain.py"), *map(str, args)], cwd=cwd, env=ONE_THREAD, timeout=300,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def last_checkpoint(out: Path) -> Path:
    return max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def saved(checkpoint: Path) -> tuple[dict, list[dict]]:
    """The checkpoint's budget state and its logged training steps (step, learning_rate)."""
    state = json.loads((checkpoint / BUDGET).read_text())
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    return state, [h for h in history if "learning_rate" in h and "loss" in h]


def check_schedule(state: dict, logged: list[dict], floor: float = 0.0) -> None:
    """Every logged step trained at the rate the schedule gives for it (global step g is optimizer step index g - 1)."""
    for h in logged:
        expected = PEAK * lr_factor(h["step"] - 1, WARMUP, state["decay_start"], state["decay_steps"], floor)
        assert h["learning_rate"] == pytest.approx(expected, rel=1e-6, abs=1e-12), (h, state)


# ---- the schedule, by hand


def test_warmup_stable_decay_values():
    f = lambda step, floor=0.0: lr_factor(step, 10, 100, 16, floor)  # noqa: E731
    assert [f(0), f(5), f(9), f(10), f(50), f(99), f(100)] == [0.0, 0.5, 0.9, 1.0, 1.0, 1.0, 1.0]
    assert f(104) == pytest.approx(0.5)  # 1 - sqrt(4/16)
    assert f(115) == pytest.approx(1 - (15 / 16) ** 0.5) and f(116) == 0.0 and f(500) == 0.0
    assert f(104, 0.1) == pytest.approx(0.55) and f(116, 0.1) == pytest.approx(0.1)
    # Not yet fixed: warmup, then the peak for as long as it takes.
    assert lr_factor(5, 10, None, None, 0.0) == 0.5 and lr_factor(10**6, 10, None, None, 0.0) == 1.0
    # A decay fixed during warmup (a tiny budget) starts from the warmup's level, not from the peak.
    assert lr_factor(4, 10, 4, 4, 0.0) == pytest.approx(0.4) and lr_factor(5, 10, 4, 4, 0.0) == pytest.approx(0.2)
    assert lr_factor(8, 10, 4, 4, 0.0) == 0.0
    assert lr_factor(0, 0, 0, 4, 0.0) == 1.0  # no warmup


def test_the_decay_is_sized_by_the_launchs_mean_step_not_the_last_few(capsys):
    # A 100 s budget decaying over its last 20%. Step 1 takes 5 s (start-up), steps 2-91 0.8 s each (77 s by step 91),
    # then 0.4 s: 80 s are passed at step 99 (80.2 s). The 19.8 s left at the mean of steps 2-99, (80.2 - 5) / 98 =
    # 0.767 s a step, are floor(25.8) = 25 steps; the last window's 0.4 s a step would say 49.
    import types

    b = budget.TimeBudget(types.SimpleNamespace(max_train_minutes=100 / 60, budget_decay_ratio=0.2, budget_min_lr_ratio=0.0))
    now = [0.0]
    b.clock, b.scheduler, b.warmup_steps = types.SimpleNamespace(training_seconds=lambda: now[0]), object(), 0
    state = types.SimpleNamespace(global_step=0, max_steps=10**6, logging_steps=1, is_world_process_zero=True)
    args = types.SimpleNamespace(device="cpu", lr_scheduler_type="linear", learning_rate=1e-3)
    control = types.SimpleNamespace(should_training_stop=False, should_log=False)
    b.on_train_begin(args, state, control)
    for step in range(1, 100):
        now[0] += 5.0 if step == 1 else 0.8 if step <= 91 else 0.4
        state.global_step = step
        b.on_step_end(args, state, control)
    assert b.decay_start == 99 and b.decay_steps == 25 and state.max_steps == 124
    assert "decays from step 99" in capsys.readouterr().out


def test_budget_options_are_checked_when_parsing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for option, value, message in [("--max_train_minutes", "0", "max_train_minutes must be above 0"),
                                   ("--budget_decay_ratio", "1.5", "budget_decay_ratio must be in (0, 1]"),
                                   ("--budget_min_lr_ratio", "-0.1", "budget_min_lr_ratio must be in [0, 1]")]:
        with pytest.raises(UserError, match=re.escape(message)):
            config.parse_args(["--output_dir", str(tmp_path / "x"), option, value])
    *_, run_args, _ = config.parse_args(["--output_dir", str(tmp_path / "x")])
    assert (run_args.max_train_minutes, run_args.budget_decay_ratio, run_args.budget_min_lr_ratio) == (None, 0.2, 0.0)


# ---- real runs


MINUTES, FLOOR = 0.1, 0.1  # a 6-second budget, decaying to a tenth of the peak


def finished_args(tmp: Path, minutes: float = MINUTES):
    return budget_args(tmp, minutes, "out", 100000, 100000, "--budget_min_lr_ratio", FLOOR)


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("budget")
    proc = run([*finished_args(tmp), "--swanlab_mode", "local", "--swanlab_log_dir", tmp / "swanlog"], tmp)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return tmp, proc.stdout


def test_a_budget_run_ends_inside_it_with_the_schedule_completed(budget_run):
    tmp, stdout = budget_run
    budget_s = MINUTES * 60
    out = tmp / "out"
    state, logged = saved(last_checkpoint(out))
    end = state["decay_start"] + state["decay_steps"]
    per_step = state["training_seconds"] / state["step"]
    # Ended by the budget, at the decay's last step, which was saved, evaluated and logged like a normal end.
    assert state["decay_trigger"] == "time" and state["step"] == end == logged[-1]["step"] and last_checkpoint(out).name == f"checkpoint-{end}"
    history = json.loads((out / f"checkpoint-{end}" / "trainer_state.json").read_text())["log_history"]
    assert any(h.get("step") == end and "eval_loss" in h for h in history)
    # Inside the budget; the decay's length came from the rate measured before it, so a slower decay runs a little
    # over: allowed one step plus 0.5 s of scheduling noise on a shared CPU.
    assert budget_s * 0.8 < state["training_seconds"] <= budget_s + per_step + 0.5, state
    # The decay started when 80% of the budget was used (at the first check after it: checks are one step apart near it).
    assert 0.8 * budget_s <= state["decay_started_at_seconds"] <= 0.8 * budget_s + 2 * per_step + 0.5, state
    check_schedule(state, logged, FLOOR)
    rates = [h["learning_rate"] for h in logged]
    assert max(rates) == pytest.approx(PEAK) and rates[WARMUP] == pytest.approx(PEAK)
    assert rates[-1] < PEAK * (FLOOR + 0.3)  # (1-sqrt) is steep at its end: the last step is close to the floor
    assert lr_factor(end, WARMUP, state["decay_start"], state["decay_steps"], FLOOR) == pytest.approx(FLOOR)  # reached as it ends
    assert f"budget: the learning rate decays from step {state['decay_start']:,}" in stdout
    line = TIME_LINE.search(stdout)
    assert line and line.group(2) == "0:06", stdout[-2000:]
    # The same numbers in SwanLab, in minutes, at the last step.
    [swan] = swanlab_log.run_dirs(tmp / "swanlog")
    curves = swanlab_log.scalars(swan)
    assert curves["time/budget_minutes"] == [(end, pytest.approx(MINUTES))]
    assert curves["time/training_minutes"] == [(end, pytest.approx(state["training_seconds"] / 60, abs=1e-3))]
    for key in ("evaluation", "saving", "before_training", "after_training"):
        assert [s for s, _ in curves[f"time/{key}_minutes"]] == [end]


@pytest.mark.slow
def test_rerunning_a_finished_budget_run_trains_no_more(budget_run):
    tmp, _ = budget_run
    end = last_checkpoint(tmp / "out").name
    # The same command finds the budget spent: no step more, the final model saved and sampled again.
    again = run(finished_args(tmp), tmp)
    assert again.returncode == 0, again.stdout[-3000:]
    assert f"{end} is already at the last step" in again.stdout and "nothing left to train in this launch" in again.stdout
    assert last_checkpoint(tmp / "out").name == end
    # Another budget for a finished run needs the explicit permission (and the finished run stays finished).
    refused = run(finished_args(tmp, 0.2), tmp)
    assert refused.returncode == 2 and "max_train_minutes=0.1" in refused.stdout and "--allow_resume_changes" in refused.stdout


@pytest.mark.slow
def test_max_steps_stays_an_upper_bound_and_the_schedule_still_completes(tmp_path):
    """A budget far longer than max_steps takes: the decay starts at 80% of max_steps and ends at it."""
    proc = run(budget_args(tmp_path, 10, "out", 100000, 100000, "--max_steps", 30), tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    state, logged = saved(last_checkpoint(tmp_path / "out"))
    assert (state["decay_trigger"], state["decay_start"], state["decay_steps"], state["step"]) == ("max_steps", 24, 6, 30)
    check_schedule(state, logged)
    assert [h["step"] for h in logged] == list(range(1, 31))
    assert re.search(r"^time: training 0:\d\d of a 10:00 budget \(max_steps 30 came first\)", proc.stdout, re.M), proc.stdout[-2000:]


@pytest.mark.slow  # over 8 s on 2 quiet cores: `make test` stays under 5 minutes; CI runs it
def test_evaluation_and_saving_do_not_eat_the_budget(tmp_path, monkeypatch, capsys):
    """In this process, with evaluation and checkpoint saving made slow (each 0.5 s longer): the training time stays
    inside the budget while the wall-clock time of train() grows by all of it, and the report counts it apart."""
    import pretrain
    import transformers

    evaluate, save = transformers.Trainer.evaluate, transformers.Trainer._save_checkpoint

    def slow(method):
        def wrapper(*args, **kwargs):
            time.sleep(0.5)  # a slow evaluation or disk, not a synchronisation
            return method(*args, **kwargs)
        return wrapper
    monkeypatch.setattr(transformers.Trainer, "evaluate", slow(evaluate))
    monkeypatch.setattr(transformers.Trainer, "_save_checkpoint", slow(save))
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert pretrain.main([*map(str, budget_args(tmp_path, 0.05, "out", 10, 10, "--eval_on_start", "true"))]) == 0
    finally:
        torch.set_num_threads(threads)
    budget_s = 3.0
    state, _ = saved(last_checkpoint(tmp_path / "out"))
    end = state["step"]
    history = json.loads((tmp_path / "out" / f"checkpoint-{end}" / "trainer_state.json").read_text())["log_history"]
    evaluations = sum("eval_loss" in h for h in history)  # step 0, every 10 steps, and the last step
    checkpoints = end // 10 + (end % 10 != 0)  # every 10 steps, and the last step
    assert evaluations >= 3 and checkpoints >= 2, (evaluations, checkpoints)
    # The budget held training time only ...
    assert state["training_seconds"] <= budget_s + state["training_seconds"] / end + 0.5, state
    # ... while train() took the budget plus every slow evaluation and save (had they eaten the budget, it would have
    # ended after about budget_s); train_runtime is printed rounded to the second.
    out = capsys.readouterr().out
    runtime = re.search(r"train done at step \d+ \| (\d+):(\d\d):(\d\d)", out)
    hours, minutes, seconds = map(int, runtime.groups())
    assert 3600 * hours + 60 * minutes + seconds >= 0.8 * budget_s + 0.5 * (evaluations + checkpoints) - 1, out[-2000:]
    # The state file and the report's training, evaluation and saving stop at the last step: its own evaluation and
    # save are reported as after training.
    assert state["evaluation_seconds"] >= 0.5 * (evaluations - 1) and state["saving_seconds"] >= 0.5 * (checkpoints - 1), state
    line = TIME_LINE.search(out)
    assert line, out[-2000:]
    minutes, seconds = map(int, line.group(3).split(":"))
    assert 60 * minutes + seconds >= int(0.5 * (evaluations - 1))  # eval_on_start's evaluation (before training) included
    minutes, seconds = map(int, line.group(4).split(":"))
    assert 60 * minutes + seconds >= int(0.5 * (checkpoints - 1))
    assert re.search(r"; after training \(final evaluation, save, sample\) 0:0[1-9]", out)  # the last step's 0.5 + 0.5 s


def _wait(proc: subprocess.Popen, ready, what: str, timeout: float = 240):
    """Poll until ready() gives a value (the process still running), and return it."""
    deadline = time.time() + timeout
    while not (value := ready()):
        assert proc.poll() is None and time.time() < deadline, f"{what}:\n{''.join(proc.output)[-3000:]}"
        time.sleep(0.05)
    return value


@pytest.mark.slow  # two launches and a kill: CI runs it (make test-all)
@pytest.mark.parametrize("when", ["stable", "decay"])
def test_a_killed_run_resumes_the_same_budget_and_schedule(tmp_path, when):
    """SIGKILL once a checkpoint is written (in the stable phase, or after the decay was fixed), then the same command:
    the budget continues from the checkpoint's training seconds, and every step, before and after the kill, trained at
    the rate the final schedule gives for it."""
    minutes, save = 0.15, 5
    budget_s = minutes * 60
    args = budget_args(tmp_path, minutes, "out", save, 100000)
    proc = start_pretrain(args, tmp_path, env=ONE_THREAD)
    out = tmp_path / "out"
    if when == "stable":  # the first checkpoint after 30% of the budget
        def ready():
            for c in sorted(out.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1])):
                state = json.loads((c.parent / BUDGET).read_text())
                if state["training_seconds"] > 0.3 * budget_s:
                    return c.parent
    else:  # the first checkpoint after the decay was fixed
        def ready():
            match = re.search(r"decays from step ([\d,]+) .* over ([\d,]+) steps", "".join(proc.output))
            if match:
                start = int(match.group(1).replace(",", ""))
                return next((c.parent for c in out.glob("checkpoint-*/trainer_state.json")
                             if int(c.parent.name.split("-")[1]) > start), None)
    checkpoint = _wait(proc, ready, "no checkpoint to kill at")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    first = "".join(proc.output)
    assert not (out / "final").exists()
    at_kill, _ = saved(checkpoint)

    resumed = run(args, tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "resuming from" in resumed.stdout and "already used by" in resumed.stdout
    state, logged = saved(last_checkpoint(out))
    assert state["launches"] == 2 and state["step"] == state["decay_start"] + state["decay_steps"]
    per_step = state["training_seconds"] / state["step"]
    # The budget went on from the checkpoint's seconds: the whole run's training stays inside one budget.
    assert at_kill["training_seconds"] > 0 and state["training_seconds"] <= budget_s + per_step + 0.5, (at_kill, state)
    if when == "decay":  # the schedule fixed before the kill is the one the resumed run finished
        decay = re.search(r"decays from step ([\d,]+) .* over ([\d,]+) steps", first)
        assert (state["decay_start"], state["decay_steps"]) == (at_kill["decay_start"], at_kill["decay_steps"]) \
            == (int(decay.group(1).replace(",", "")), int(decay.group(2).replace(",", "")))
        assert "budget: the learning rate decays" not in resumed.stdout
    # Steps up to the checkpoint come from the first launch, the rest from the resumed one: one schedule for all.
    assert {h["step"] for h in logged} >= set(range(1, state["step"] + 1))
    check_schedule(state, logged)
