"""One launch, one truth: real two-process runs (gloo on the CPU) with faults injected where a GPU cluster would show
them: a rank that lists the checkpoints differently, a rank 0 whose saves are slow, a resume under another world size,
and a preset whose global batch must not grow with the number of processes."""
import json
import os
import subprocess
import sys

import pytest

from conftest import DEMO, REPO, failure, run_pretrain

pytestmark = pytest.mark.slow  # two-process launches: minutes on two cores; `make test-all` and CI run them

TINY = ["--block_size", 32, "--tokenizer_vocab_size", 300, "--eval_on_start", "false", "--logging_steps", 1,
        "--swanlab_mode", "disabled", "--eval_steps", 100]

# Runs pretrain.py as torchrun starts it, after injecting the fault FAULT names into this rank.
FAULTY = """
import json, os, runpy, sys, time
sys.path.insert(0, {repo!r})
fault, rank = os.environ["FAULT"], int(os.environ.get("RANK", "0"))
if fault == "listing" and rank == 1:  # this rank's view of the shared folder shows no checkpoint at all
    from zhpretrain.run import checkpoint
    checkpoint.last_checkpoint = lambda *a, **k: None
if fault == "slow_save":
    from transformers import Trainer
    from zhpretrain.run import checkpoint
    from zhpretrain.train.trainer import PretrainTrainer
    save, digest, train = Trainer._save_checkpoint, checkpoint.write_manifest, PretrainTrainer.train
    def slow_save(self, *a, **k):
        if rank == 0:
            time.sleep(2.0)  # a slow disk under rank 0's write of the checkpoint
        return save(self, *a, **k)
    def slow_digest(*a, **k):
        time.sleep(3.0)  # and under its digests (only rank 0 hashes, in a thread of its own while training goes on)
        return digest(*a, **k)
    def train_and_record(self, *a, **k):
        result = train(self, *a, **k)
        record = {{"training": self.clock.training_seconds(), **self.clock.spent}}
        with open(os.path.join(self.args.output_dir, f"clock-rank{{rank}}.json"), "w") as f:
            f.write(json.dumps(record))
        return result
    Trainer._save_checkpoint, checkpoint.write_manifest, PretrainTrainer.train = slow_save, slow_digest, train_and_record
if fault == "clock_ahead":  # rank 1's training clock reads 3 s ahead (as after a slow first step); each rank records its budget
    from zhpretrain.train.clock import Clock
    from zhpretrain.train.trainer import PretrainTrainer
    seconds, train = Clock.training_seconds, PretrainTrainer.train
    if rank == 1:
        Clock.training_seconds = lambda self: seconds(self) + 3.0
    def train_and_record(self, *a, **k):
        result = train(self, *a, **k)
        b = self.budget
        record = {{"decay_start": b.decay_start, "decay_steps": b.decay_steps, "training": b.used(), "step": self.state.global_step}}
        with open(os.path.join(self.args.output_dir, f"budget-rank{{rank}}.json"), "w") as f:
            f.write(json.dumps(record))
        return result
    PretrainTrainer.train = train_and_record
sys.argv = [{pretrain!r}, *sys.argv[1:]]
runpy.run_path({pretrain!r}, run_name="__main__")
"""


def faulty(tmp_path, fault: str, *args, timeout=600):
    script = tmp_path / "faulty.py"
    script.write_text(FAULTY.format(repo=str(REPO), pretrain=str(REPO / "pretrain.py")))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", script, *args]
    return subprocess.run(list(map(str, cmd)), cwd=tmp_path, env={**os.environ, "FAULT": fault},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


def history(ck):
    return [h for h in json.loads((ck / "trainer_state.json").read_text())["log_history"] if "loss" in h]


def test_small_preset_trains_the_same_steps_on_one_and_two_processes(tmp_path):
    # small.yaml's schedule (the dial's warmup-stable-decay and peak learning rate) and Muon, a given global_batch_tokens; a tiny width, block and
    # batch so a step takes a second: 512 tokens = 16 sequences of 32, at most 4 per device.
    small = [REPO / "configs" / "small.yaml", "--train_file", DEMO, *TINY, "--global_batch_tokens", 512,
             "--per_device_train_batch_size", 4, "--max_steps", 3, "--save_steps", 3, "--bf16", "false",
             "--config_overrides", "hidden_size=64,intermediate_size=128,num_hidden_layers=1,num_attention_heads=2,num_key_value_heads=1"]
    runs = {}
    for n in (1, 2):
        proc = run_pretrain(*small, "--nproc_per_node", n, "--output_dir", tmp_path / f"n{n}", "--cache_dir", tmp_path / "cache",
                            cwd=tmp_path)
        assert proc.returncode == 0, failure(proc.stdout)
        assert f"4 per device x {4 // n} accumulation x {n} processes = 16 sequences = 512 tokens per step (global_batch_tokens" \
            in proc.stdout, proc.stdout[-3000:]
        runs[n] = history(tmp_path / f"n{n}" / "checkpoint-3")
    for key in ("learning_rate", "tokens_seen", "step"):
        assert [h[key] for h in runs[1]] == [h[key] for h in runs[2]], key
    # small.yaml is depth 12 on the dial: peak 0.5 x 0.3118 x C^-0.125 = 1.2e-3; over 3 steps the decay is round(0.2 x 3)
    # = 1 step and the warmup min(20, 3 - 1) = 2 steps, so steps 1, 2, 3 use 0/2, 1/2 and (decay start) 1 of the peak.
    assert [h["learning_rate"] for h in runs[1]] == pytest.approx([0.0, 0.6e-3, 1.2e-3])


def test_a_rank_that_lists_no_checkpoint_still_resumes_where_rank_0_decided(tmp_path):
    # One process writes checkpoint-2 with 8 sequences a step; two processes (4 each, another world size) resume it, and
    # rank 1 is made to see an empty folder. Without rank 0's decision broadcast, rank 1 trains from step 0 and the
    # replicas disagree on the step (a hang or a crash at the end).
    common = [*TINY, "--per_device_train_batch_size", 8, "--output_dir", tmp_path / "out", "--cache_dir", tmp_path / "cache",
              "--save_steps", 2, "--learning_rate", 1e-3]
    first = run_pretrain(*common, "--max_steps", 2, cwd=tmp_path)
    assert first.returncode == 0, failure(first.stdout)
    proc = faulty(tmp_path, "listing", *common, "--max_steps", 4, "--per_device_train_batch_size", 4,
                  "--allow_resume_changes", "true", timeout=400)
    assert proc.returncode == 0, failure(proc.stdout)
    assert f"resuming from {tmp_path / 'out' / 'checkpoint-2'}" in proc.stdout
    steps = history(tmp_path / "out" / "checkpoint-4")
    assert [h["step"] for h in steps] == [1, 2, 3, 4]
    assert [h["tokens_seen"] for h in steps] == [s * 8 * 32 for s in (1, 2, 3, 4)]  # the same global batch after the resume


def test_rank_0s_slow_saves_are_not_training_time_on_any_rank(tmp_path):
    # Rank 0 takes 2 s more to write each of its 3 checkpoints. Without the barrier inside our save, rank 1 goes on to
    # its next step and waits for rank 0 in the gradient all-reduce: 6 s on its training clock, which the time budget
    # (the largest clock of any rank) counts as training. Rank 0's digests take 3 s more each: hashed in the background,
    # rank 1 does not wait for them (before, it waited 9 s more at a second barrier).
    proc = faulty(tmp_path, "slow_save", *TINY, "--per_device_train_batch_size", 4, "--max_steps", 6, "--save_steps", 2,
                  "--output_dir", tmp_path / "out", "--cache_dir", tmp_path / "cache", timeout=400)
    assert proc.returncode == 0, failure(proc.stdout)
    clocks = [json.loads((tmp_path / "out" / f"clock-rank{r}.json").read_text()) for r in (0, 1)]
    assert clocks[0]["saving"] >= 6 and clocks[1]["saving"] >= 5, clocks  # rank 1 waited for rank 0 inside its pause
    assert clocks[1]["saving"] < 12, clocks  # but not for rank 0's digests
    assert abs(clocks[1]["training"] - clocks[0]["training"]) < 2.5, clocks


def test_a_time_budget_on_two_processes_agrees_on_one_decay_and_ends_inside_it(tmp_path):
    # Rank 1's clock reads 3 s ahead of rank 0's. The budget takes the larger clock at each check (one all-reduce), so
    # both ranks fix the same decay, sized from the agreed clock's mean step, and train the same steps; deciding each on
    # its own clock, rank 1 would start its decay ~3 s of steps earlier and the two would hang or crash at the end.
    budget = 0.25 * 60
    proc = faulty(tmp_path, "clock_ahead", *TINY, "--per_device_train_batch_size", 4, "--max_train_minutes", 0.25,
                  "--max_steps", 100000, "--warmup_steps", 2, "--save_steps", 100000, "--max_eval_samples", 8,
                  "--max_new_tokens", 2, "--output_dir", tmp_path / "out", "--cache_dir", tmp_path / "cache", timeout=400)
    assert proc.returncode == 0, failure(proc.stdout)
    ranks = [json.loads((tmp_path / "out" / f"budget-rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["decay_start"] is not None and ranks[0]["decay_steps"] > 1, ranks
    for key in ("decay_start", "decay_steps", "step"):
        assert ranks[0][key] == ranks[1][key], (key, ranks)
    assert ranks[0]["step"] == ranks[0]["decay_start"] + ranks[0]["decay_steps"], ranks
    per_step = ranks[1]["training"] / ranks[1]["step"]
    assert budget * 0.8 < ranks[1]["training"] <= budget + per_step + 0.5, ranks  # by the larger clock; test_budget.py's slack
    assert ranks[0]["training"] < budget - 2.0, ranks  # rank 0 followed rank 1's clock, ~3 s short of its own
