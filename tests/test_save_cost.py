"""Saving and evaluating cost less of the run (issue 16 item 4): rank 0 hashes a checkpoint into its manifest in the
background while training goes on, a kill during that hash leaves a run that resumes, and evaluations during training
use the first eval_subset_samples blocks while the last one uses the whole (max_eval_samples-bounded) split."""
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, failure, run_pretrain
from zhpretrain import config
from zhpretrain.errors import UserError
from zhpretrain.run import checkpoint

TINY = ["--block_size", 32, "--per_device_train_batch_size", 4, "--logging_steps", 1, "--swanlab_mode", "disabled",
        "--tokenizer_vocab_size", 300, "--max_new_tokens", 4]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # one tokenizer and one block cache for the runs of this file


# ---- the manifest in the background

def test_a_pending_manifest_holds_each_files_digest(tmp_path):
    (tmp_path / "sub").mkdir()
    files = {"model.safetensors": os.urandom(300_000), "sub/rng_state.pth": b"rng"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    checkpoint.PendingManifest(tmp_path).wait()
    written = json.loads((tmp_path / checkpoint.MANIFEST).read_text())
    assert written == {name: {"size": len(data), "blake2b": hashlib.blake2b(data).hexdigest()[:32]} for name, data in files.items()}


def test_a_manifest_that_cannot_be_written_stops_the_run_with_one_paragraph(tmp_path):
    from zhpretrain.train.trainer import PretrainTrainer

    gone = tmp_path / "out" / "checkpoint-4"  # removed under the run (by hand, by another tool)
    trainer = types.SimpleNamespace(pending_manifest=checkpoint.PendingManifest(gone))
    with pytest.raises(UserError, match=r"Writing .*checkpoint-4 failed \(No such file or directory\)"):
        PretrainTrainer.wait_for_manifest(trainer)
    assert trainer.pending_manifest is None  # raised once, not again at the next save


# A slow disk under rank 0's digests of checkpoint-4: the hash blocks until the process is killed.
SLOW_HASH = """
import os, runpy, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from zhpretrain.run import checkpoint
write = checkpoint.write_manifest
def slow(folder):
    if Path(folder).name == "checkpoint-4":
        Path(os.environ["HASHING"]).write_text(str(folder))
        time.sleep(600)
    write(folder)
checkpoint.write_manifest = slow
sys.argv = [{pretrain!r}, *sys.argv[1:]]
runpy.run_path({pretrain!r}, run_name="__main__")
"""


@pytest.mark.slow  # two runs of ~40 s on one busy core
def test_training_goes_on_while_a_checkpoint_is_hashed_and_a_kill_then_resumes(tmp_path, cache):
    argv = [*TINY, "--max_steps", 8, "--save_steps", 2, "--eval_steps", 100, "--eval_on_start", "false",
            "--output_dir", tmp_path / "out", "--cache_dir", cache]
    script, hashing, log = tmp_path / "slow_hash.py", tmp_path / "hashing", tmp_path / "out" / "train.log"
    script.write_text(SLOW_HASH.format(repo=str(REPO), pretrain=str(REPO / "pretrain.py")))
    with open(tmp_path / "console.txt", "w") as console:
        proc = subprocess.Popen([sys.executable, script, *map(str, argv)], cwd=tmp_path, stdout=console,
                                stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "HASHING": str(hashing)})
    try:
        # Steps 5 and 6 are trained while checkpoint-4 is being hashed: the save at step 4 did not wait for its digests.
        # (Before: the hash ran inside the save, and step 5 never came.) The save at step 6 then waits for them.
        deadline = time.time() + 300
        while not (hashing.exists() and log.is_file() and "step 6/8" in log.read_text()):
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "console.txt").read_text()[-3000:]
            time.sleep(0.2)
        out = tmp_path / "out"
        assert (out / "checkpoint-2" / checkpoint.MANIFEST).is_file() and not (out / "checkpoint-4" / checkpoint.MANIFEST).exists()
        assert not (out / "checkpoint-6").exists()  # the next save waits for the pending manifest before writing anything
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the hash is interrupted: checkpoint-4 has all its files and no manifest
        proc.wait()
    assert [p.name for p in (out / "checkpoint-4").iterdir() if p.name.startswith(".")] == []  # no cut manifest left
    # Every file of checkpoint-4 was written before its hash began: it loads and the run resumes there.
    resumed = run_pretrain(*argv, cwd=tmp_path)
    assert resumed.returncode == 0, failure(resumed.stdout)
    assert re.search(r"resuming from \S*checkpoint-4\b", resumed.stdout), resumed.stdout[-3000:]
    kept = sorted(p.name for p in out.iterdir() if checkpoint.CHECKPOINT.match(p.name))
    assert kept == ["checkpoint-6", "checkpoint-8"]  # the demo preset keeps 2
    for name in kept:  # the last one's manifest too: training waits for it before it returns
        assert (out / name / checkpoint.MANIFEST).is_file() and checkpoint.checkpoint_problem(out / name) is None, name


# ---- evaluations during training on a subset, the last one on the whole split

def test_eval_subset_samples_is_range_checked():
    with pytest.raises(UserError, match=r"--eval_subset_samples must be at least 0 \(0: the whole split at every evaluation\), not -1"):
        config.parse_args(["--eval_subset_samples", "-1"])


def mean_loss(folder: Path, blocks: np.ndarray) -> float:
    """Next-token cross-entropy of the model saved in folder, averaged over every predicted token of the blocks."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.from_numpy(blocks.astype(np.int64))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).item()


@pytest.mark.slow  # a run of ~40 s on one busy core
def test_evaluations_during_training_use_the_subset_and_the_last_the_whole_split(tmp_path, cache):
    out = tmp_path / "out"
    # causal attention across the packed documents: mean_loss below is the plain causal recomputation
    proc = run_pretrain(*TINY, "--document_attention", "false", "--max_steps", 4, "--save_steps", 2, "--eval_steps", 2,
                        "--eval_subset_samples", 3, "--max_eval_samples", 40, "--output_dir", out, "--cache_dir", cache, cwd=tmp_path)
    assert proc.returncode == 0, failure(proc.stdout)
    evals = {int(m[1]): (float(m[2]), int(m[3].replace(",", ""))) for m in
             re.finditer(r"^eval  step (\d+) \| loss ([\d.]+) \|.*\| ([\d,]+) blocks", (out / "train.log").read_text(), re.M)}
    assert {step: n for step, (_, n) in evals.items()} == {0: 3, 2: 3, 4: 40}, evals
    # The losses are those of the blocks said: the first 3 of the test split with step 2's weights (checkpoint-2),
    # the first 40 (max_eval_samples) with the last step's (final/), computed here from the cached test tokens.
    meta = next(cache.glob("**/meta.json"))
    dtype = json.loads(meta.read_text())["dtype"]
    tokens = np.fromfile(meta.parent / "test.bin", dtype=dtype)
    test = tokens[:len(tokens) // 32 * 32].reshape(-1, 32)  # block i: tokens 32i..32i+31 (the tail is in no block)
    assert len(test) > 40
    assert mean_loss(out / "checkpoint-2", test[:3]) == pytest.approx(evals[2][0], abs=2e-4)
    assert mean_loss(out / "final", test[:40]) == pytest.approx(evals[4][0], abs=2e-4)
    assert mean_loss(out / "final", test[:3]) != pytest.approx(evals[4][0], abs=2e-4)  # the subset would read otherwise
    assert f"final: eval_loss {evals[4][0]:.4f}" in proc.stdout  # final/ and its card report the whole split's
