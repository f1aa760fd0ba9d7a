"""One tiny real training run per test session, shared by the generate, plot and dashboard tests."""
from pathlib import Path

from conftest import run_pretrain

TOKENS_PER_STEP = 16 * 32  # the demo preset's 16 sequences per step, times the block size below


def tiny_run(tmp_path_factory) -> Path:
    """6 steps of the demo preset with 32-token blocks: train logs at 2, 4, 6, evaluations and checkpoints at 0/3, 3, 6.

    Trained once into the session's temporary folder; later calls (from other test files) find it there."""
    root = tmp_path_factory.getbasetemp() / "tiny-run"
    if not (root / "out" / "final" / "model.safetensors").is_file():
        root.mkdir(exist_ok=True)
        proc = run_pretrain("--max_steps", 6, "--block_size", 32, "--logging_steps", 2, "--eval_steps", 3, "--save_steps", 3,
                            "--max_new_tokens", 4, "--output_dir", root / "out", "--cache_dir", root / "cache",
                            "--swanlab_mode", "local", "--swanlab_log_dir", root / "swanlog", cwd=root)
        assert proc.returncode == 0, proc.stdout[-3000:]
    return root
