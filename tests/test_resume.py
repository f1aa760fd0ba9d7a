"""The resume decision (run/resume.py) on one process: settings changed under --allow_resume_changes really apply,
--resume_from_checkpoint is honoured or refused, every file of a checkpoint is verified (a damaged one falls back),
the global batch in tokens, and real parameter counts under ZeRO-3."""
import json
import shutil
import types
from pathlib import Path

import pytest
import torch

import pretrain
from conftest import REPO, failure, run_pretrain
from zhpretrain.errors import UserError
from zhpretrain.run import checkpoint

TINY = ["--block_size", 32, "--per_device_train_batch_size", 4, "--eval_on_start", "false", "--logging_steps", 1,
        "--swanlab_mode", "disabled", "--tokenizer_vocab_size", 300, "--lr_scheduler_type", "constant", "--warmup_steps", 0]


def args(tmp: Path, steps: int, *extra, out: str = "out"):
    return [*TINY, "--max_steps", steps, "--save_steps", 2, "--eval_steps", 100, "--output_dir", tmp / out,
            "--cache_dir", tmp / "cache", *extra]


def logged(ck: Path, key: str) -> dict[int, float]:
    history = json.loads((ck / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: h[key] for h in history if key in h and "loss" in h}


def refused(*argv) -> str:
    with pytest.raises(UserError) as e:
        pretrain.main([*map(str, argv)])
    return " ".join(str(e.value).split())


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """A tiny run with checkpoints at steps 2 and 4 (learning rate 2e-3, constant), copied fresh for each test."""
    tmp = tmp_path_factory.mktemp("resume")
    proc = run_pretrain(*args(tmp, 4, "--learning_rate", 2e-3), cwd=tmp)
    assert proc.returncode == 0, failure(proc.stdout)
    return tmp


@pytest.fixture
def run_copy(two_checkpoints, tmp_path):
    shutil.copytree(two_checkpoints / "out", tmp_path / "out")
    shutil.copytree(two_checkpoints / "cache", tmp_path / "cache")
    return tmp_path


@pytest.mark.slow  # a second run of a minute on two busy cores
def test_a_learning_rate_and_beta_changed_on_resume_are_the_ones_used(run_copy):
    tmp = run_copy
    proc = run_pretrain(*args(tmp, 6, "--learning_rate", 1e-3, "--adam_beta2", 0.9, "--allow_resume_changes", "true"), cwd=tmp)
    assert proc.returncode == 0, failure(proc.stdout)
    assert "learning_rate: 0.002 -> 0.001" in proc.stdout
    lrs = logged(tmp / "out" / "checkpoint-6", "learning_rate")
    assert lrs[4] == pytest.approx(2e-3) and lrs[5] == pytest.approx(1e-3) and lrs[6] == pytest.approx(1e-3), lrs
    groups = torch.load(tmp / "out" / "checkpoint-6" / "optimizer.pt", weights_only=True)["adamw"]["param_groups"]  # beside Muon
    assert {tuple(g["betas"]) for g in groups} == {(0.9, 0.9)}  # adam_beta1 0.9 (default), adam_beta2 the new 0.9


@pytest.mark.slow  # a second run of a minute on two busy cores
def test_another_optimizer_is_refused_even_with_allow_resume_changes(run_copy):
    message = refused(*args(run_copy, 6, "--learning_rate", 2e-3, "--optim", "sgd", "--allow_resume_changes", "true"))
    assert "--optim adamw_torch_fused" in message and "does not fit" in message, message


@pytest.mark.slow  # a second run of a minute on two busy cores
def test_resume_from_checkpoint_is_honoured(run_copy):
    tmp = run_copy
    proc = run_pretrain(*args(tmp, 4, "--learning_rate", 2e-3, "--resume_from_checkpoint", tmp / "out" / "checkpoint-2"), cwd=tmp)
    assert proc.returncode == 0, failure(proc.stdout)
    assert f"resuming from {tmp / 'out' / 'checkpoint-2'}" in proc.stdout, proc.stdout[-2000:]
    steps = logged(tmp / "out" / "checkpoint-4", "loss")
    assert sorted(steps) == [1, 2, 3, 4]  # steps 3 and 4 trained again from checkpoint-2


@pytest.mark.slow  # a second run of a minute on two busy cores
def test_resume_from_another_runs_checkpoint_is_refused(run_copy, tmp_path_factory):
    other = tmp_path_factory.mktemp("other")
    message = refused(*args(other, 4, "--learning_rate", 2e-3, "--resume_from_checkpoint", run_copy / "out" / "checkpoint-2"))
    assert "is not a checkpoint-N folder of this run's --output_dir" in message and "--init_from" in message, message
    assert not (other / "out" / "checkpoint-4").exists()


# ---- every file of a checkpoint is verified: a damaged one is moved aside and the one before is used

DAMAGE = {
    "rng_state.pth": lambda p: p.write_bytes(b"not a pickle at all"),
    "zhpretrain_shape.json": lambda p: p.write_text("{broken"),
    "zhpretrain_budget.json": lambda p: p.write_text(p.read_text()[:-5]),
    "trainer_state.json": lambda p: p.write_text("{}"),
    "config.json": lambda p: p.write_text(""),
}


@pytest.mark.parametrize("manifest", [True, False], ids=["with-manifest", "without-manifest"])
@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_any_damaged_file_of_a_checkpoint_falls_back_to_the_one_before(run_copy, name, manifest):
    out = run_copy / "out"
    newest = out / "checkpoint-4"
    if not manifest:  # a run killed between the Trainer's save and ours: the loads alone must decide
        (newest / checkpoint.MANIFEST).unlink()
    DAMAGE[name](newest / name)
    assert checkpoint.last_checkpoint(out, move_aside=True) == str(out / "checkpoint-2")
    assert (out / "damaged-checkpoint-4").is_dir() and not newest.exists()


def test_the_manifest_covers_every_file_of_a_checkpoint(two_checkpoints):
    ck = two_checkpoints / "out" / "checkpoint-4"
    listed = set(json.loads((ck / checkpoint.MANIFEST).read_text()))
    on_disk = {str(p.relative_to(ck)) for p in ck.rglob("*") if p.is_file()} - {checkpoint.MANIFEST}
    assert listed == on_disk and {"rng_state.pth", "zhpretrain_shape.json", "zhpretrain_budget.json"} <= listed


# ---- the global batch in tokens, derived for any number of processes

@pytest.mark.parametrize("world, micro, accumulation", [(1, 32, 4), (2, 32, 2), (4, 32, 1), (8, 16, 1), (16, 8, 1)])
def test_global_batch_tokens_gives_the_same_step_on_any_number_of_processes(world, micro, accumulation, capsys):
    from zhpretrain.train.trainer import global_batch

    # small.yaml: 65,536 tokens of 512-token blocks = 128 sequences per step, at most 32 per device.
    training_args = types.SimpleNamespace(world_size=world, per_device_train_batch_size=32, gradient_accumulation_steps=1)
    shape = global_batch(training_args, 512, False, 65536)
    assert (shape["per_device_train_batch_size"], shape["gradient_accumulation_steps"]) == (micro, accumulation)
    assert shape["sequences_per_step"] == 128 and "= 65,536 tokens per step" in capsys.readouterr().out


def test_a_global_batch_that_does_not_split_is_refused():
    from zhpretrain.train.trainer import global_batch

    training_args = types.SimpleNamespace(world_size=3, per_device_train_batch_size=32, gradient_accumulation_steps=1)
    with pytest.raises(UserError, match="global_batch_tokens 65,536 is not a whole number of sequences"):
        global_batch(training_args, 512, False, 65536)


def test_parameters_are_counted_at_their_real_size_under_zero3():
    from transformers import AutoConfig, AutoModelForCausalLM

    from zhpretrain.model.build import count_parameters
    from zhpretrain.train.speed import flops_per_token

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(REPO / "configs" / "models" / "qwen2-demo.json"))
    counts, flops = count_parameters(model), flops_per_token(model, 128)
    for p in model.parameters():  # what deepspeed.zero.Init leaves on each rank: an empty placeholder and the real size
        p.ds_numel = p.numel()
        p.data = torch.empty(0)
    assert counts["parameters"] > 10**6
    assert count_parameters(model) == counts and flops_per_token(model, 128) == flops
