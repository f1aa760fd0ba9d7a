"""SwanLab: a resumed run continues one run id and one curve; only the curves people read are charts."""
from pathlib import Path

import pytest

import swanlab_log
from conftest import run_pretrain
from tiny_run import tiny_run

TINY = ["--block_size", 64, "--per_device_train_batch_size", 8, "--eval_on_start", "false", "--logging_steps", 5,
        "--eval_steps", 10, "--save_steps", 10, "--dataloader_num_workers", 0, "--sample_prompts", "陕西省是",
        "--max_new_tokens", 8]


def dashboard_charts(swanlog) -> list[str]:
    """The chart names of the newest experiment in the local dashboard's database, in the order the page shows them
    (SwanLab 0.10.3 puts all of them in one section, in the order they were created)."""
    import sqlite3

    with sqlite3.connect(Path(swanlog) / "runs.swanlab") as db:
        [(experiment,)] = db.execute("SELECT max(id) FROM experiment").fetchall()
        names = [name for (name,) in db.execute("SELECT name FROM chart WHERE experiment_id = ? ORDER BY id", (experiment,))]
    return list(dict.fromkeys(names))  # each key has two rows (its chart and its entry in the multi-run chart)


def test_the_dashboard_shows_the_watched_curves_first_and_no_bookkeeping(tmp_path_factory):
    root = tiny_run(tmp_path_factory)  # the demo preset: an evaluation at step 0, then training logs; no MFU on a CPU
    charts = dashboard_charts(root / "swanlog")
    # The text panels land where SwanLab's media flush puts them (4th in one run, last in another): curves only here.
    curves = [c for c in charts if c not in ("samples", "final_sample")]
    assert curves[:7] == ["eval/loss", "eval/bits_per_byte", "eval/perplexity", "train/loss", "train/learning_rate",
                          "train/grad_norm", "train/tokens_per_second"], charts
    assert "samples" in charts and all(c.startswith("time/") for c in curves[7:]), charts  # budget.py's summary, last
    [run_dir] = swanlab_log.run_dirs(root / "swanlog")
    logged = set(swanlab_log.scalars(run_dir))
    assert not {k for k in logged if "epoch" in k or "global_step" in k or "runtime" in k or "per_second" in k and
                "tokens" not in k or "tokens_seen" in k or "flos" in k or k.startswith("single_value/")}, logged


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
    # No bookkeeping charts: they would crowd the curves people read (tracking.CHARTS).
    assert not {k for k in after if k.startswith(("trainer/", "single_value/")) or k in (
        "train/epoch", "train/global_step", "eval/runtime", "eval/samples_per_second", "train/tokens_seen")}, after
    if mode == "offline":
        assert [s for s, _ in swanlab_log.texts(newest[0])["samples"]] == [20]
        return
    # The local dashboard holds one experiment for the run, under its own name, with the whole curve and every
    # evaluation's samples (the first start's, step 10, copied in); the first start's folder stays on disk.
    import sqlite3

    assert old.is_dir() and swanlab_log.texts(old)["samples"][0][0] == 10
    with sqlite3.connect(tmp_path / "swanlog" / "runs.swanlab") as db:
        assert db.execute("SELECT name, run_id FROM experiment").fetchall() == [("out", newest[0].name)]
    assert [s for s, _ in swanlab_log.texts(newest[0])["samples"]] == [10, 20]
    assert swanlab_log.texts(newest[0])["samples"][0] == swanlab_log.texts(old)["samples"][0]

