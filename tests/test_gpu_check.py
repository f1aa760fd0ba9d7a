"""The GPU check (tests/benchmarks/gpu_check.py) in its reduced mode on the CPU: it runs end to end, so it cannot rot
before the first GPU day, and what it reports is read back from its JSON."""
import json
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "tests" / "benchmarks"))


def test_reduced_gpu_check_runs_and_reports(tmp_path, monkeypatch, capsys):
    import gpu_check

    monkeypatch.chdir(REPO)
    out = tmp_path / "check.json"
    gpu_check.main(["--reduced", "--steps", "4", "--logging_steps", "2", "--cache_dir", str(tmp_path / "cache"),
                    "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["environment"]["commit"] and result["environment"]["torch"] and result["skipped"] == []
    [row] = result["rows"]
    assert (row["shape"], row["attn_implementation"], row["torch_compile"], row["steps"]) == ("tiny", "sdpa", False, 4)
    # The same model, weights and batches on both sides: the losses agree; both sides trained tokens.
    assert row["max_abs_loss_diff"] < 1e-4 and row["project_tokens_per_second"] > 0 and row["plain_tokens_per_second"] > 0
    assert row["mfu_project"] is None and row["mfu_plain"] is None  # a CPU has no datasheet peak: no MFU (train/speed.py)
    # Timed steps 2..5 (one warm-up step): 3 and 5 neither log, evaluate nor save (logs at 2, 4) and read nothing back.
    assert row["host_reads_per_plain_step"] == 0, row["host_read_sites"]
    assert row["cuda_syncs_per_plain_step"] is None  # no CUDA here
    assert any(sites for sites in row["host_read_sites"].values())  # the logging steps do read the loss back
    assert "| tiny | sdpa | off | off |" in capsys.readouterr().out
