"""SwanLab: a resumed run continues one run id and one curve; the charts people rarely read are grouped away."""
import pytest

import swanlab_log
from conftest import run_pretrain
from zhpretrain.report import tracking

TINY = ["--block_size", 64, "--per_device_train_batch_size", 8, "--eval_on_start", "false", "--logging_steps", 5,
        "--eval_steps", 10, "--save_steps", 10, "--dataloader_num_workers", 0, "--sample_prompts", "陕西省是",
        "--max_new_tokens", 8]


def test_chart_groups():
    for key in ("train/loss", "train/learning_rate", "train/tokens_per_second", "eval/loss", "eval/bits_per_byte"):
        assert tracking.chart_key(key) == key
    assert tracking.chart_key("train/epoch") == "trainer/epoch"
    assert tracking.chart_key("train/global_step") == "trainer/global_step"
    assert tracking.chart_key("eval/runtime") == "trainer/eval_runtime"
    assert tracking.chart_key("eval/samples_per_second") == "trainer/eval_samples_per_second"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["local", "offline"])
def test_a_resumed_run_continues_the_same_swanlab_run_and_curve(tmp_path, mode):
    common = [*TINY, "--output_dir", tmp_path / "out", "--cache_dir", tmp_path / "cache", "--swanlab_mode", mode,
              "--swanlab_log_dir", tmp_path / "swanlog"]
    first = run_pretrain(*common, "--max_steps", 10, cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:]
    run_id = (tmp_path / "out" / "swanlab_id").read_text()
    [old] = swanlab_log.run_dirs(tmp_path / "swanlog")
    before = swanlab_log.scalars(old)
    assert [s for s, _ in before["train/loss"]] == [5, 10]

    # Training on to step 20 changes max_steps, which the run's identity guards: allowed explicitly.
    second = run_pretrain(*common, "--max_steps", 20, "--allow_resume_changes", "true", cwd=tmp_path)
    assert second.returncode == 0, second.stdout[-3000:]
    assert "resuming from" in second.stdout
    assert (tmp_path / "out" / "swanlab_id").read_text() == run_id
    # SwanLab 0.10 writes a new folder per start, even with the same id: the newest one holds the whole curve.
    newest = [d for d in swanlab_log.run_dirs(tmp_path / "swanlog") if d != old]
    assert len(newest) == 1 and newest[0].name.endswith(run_id) and old.name.endswith(run_id)
    after = swanlab_log.scalars(newest[0])
    assert [s for s, _ in after["train/loss"]] == [5, 10, 15, 20]
    assert after["train/loss"][:2] == before["train/loss"]  # the first run's points, as the first run logged them
    assert [s for s, _ in after["eval/loss"]] == [10, 20] and after["eval/loss"][0] == before["eval/loss"][0]
    # Bookkeeping charts under trainer/, away from the curves people read.
    assert "trainer/epoch" in after and "trainer/eval_runtime" in after and "trainer/global_step" in after
    assert not {"train/epoch", "train/global_step", "eval/runtime", "eval/samples_per_second"} & set(after)
    assert [s for s, _ in swanlab_log.texts(newest[0])["samples"]] == [20]

