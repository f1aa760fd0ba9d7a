"""No host read of a device value on a plain training step: one that neither logs, evaluates nor saves.

On a GPU each read (loss.item(), `if tensor:`, float(tensor) ...) makes the host wait until the device has finished
everything queued, so the host stops queueing work ahead and the device idles between kernels. A CPU runs the same
Python, so the reads can be counted here, in a real run of pretrain.py (in-process, the demo preset made tiny)."""
import sys

import pytest

import pretrain
from conftest import REPO

sys.path.insert(0, str(REPO / "tests" / "benchmarks"))
from host_reads import HostReads, PerStep  # noqa: E402


def train_counting(tmp_path, monkeypatch, *extra) -> tuple[HostReads, PerStep]:
    from zhpretrain.train import trainer as training

    reads, steps = HostReads(), None
    build = training.build

    def counted_build(*args, **kwargs):
        nonlocal steps
        trainer = build(*args, **kwargs)
        steps = PerStep(reads).attach(trainer)
        return trainer
    monkeypatch.setattr(training, "build", counted_build)
    argv = ["configs/demo.yaml", "--output_dir", tmp_path / "out", "--cache_dir", tmp_path / "cache", "--swanlab_mode", "disabled",
            "--max_steps", 12, "--block_size", 32, "--per_device_train_batch_size", 4, "--gradient_accumulation_steps", 2,
            "--logging_steps", 4, "--eval_steps", 6, "--save_steps", 6, "--eval_on_start", "false", "--max_eval_samples", 8,
            "--max_new_tokens", 2, *extra]
    monkeypatch.chdir(REPO)
    with reads:
        assert pretrain.main([str(a) for a in argv]) == 0
    return reads, steps


@pytest.mark.parametrize("document_attention", ["true", pytest.param("false", marks=pytest.mark.slow)])  # ~30 s CPU each
def test_plain_steps_read_nothing_back(tmp_path, monkeypatch, document_attention):
    reads, steps = train_counting(tmp_path, monkeypatch, "--document_attention", document_attention)
    plain = steps.plain_steps()
    assert steps.steps == 12 and plain == [1, 2, 3, 5, 7, 9, 10, 11], (steps.steps, plain)  # logs at 4, 8, 12; eval/save at 6, 12
    # The counter sees reads: the logging steps read the loss and the gradient norm back (or this test could not fail).
    assert all(reads.counts[k] > 0 for k in (4, 8)), dict(reads.counts)
    found = {k: dict(reads.sites[k]) for k in plain if reads.counts[k]}
    assert not found, f"host reads on plain steps (step: where): {found}"
