"""Shared fixtures: the repo paths, the shared sample data (skipped when absent), tiny corpora and argument objects."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `pytest` as well as `python -m pytest` finds pretrain.py and the package
SHARED = REPO.parent / "shared" / "data"
DEMO = REPO / "data" / "demo-zhwiki.jsonl"


def shared(name: str) -> Path:
    path = SHARED / name
    if not path.is_file():
        pytest.skip(f"{path} is not here (../shared is absent)")
    return path


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def run_pretrain(*args, cwd=REPO, timeout=600, env=None):
    """Run pretrain.py as a user would; return the CompletedProcess (stdout and stderr merged)."""
    return subprocess.run([sys.executable, str(REPO / "pretrain.py"), *map(str, args)], cwd=cwd, env=env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def data_args(tmp_path):
    from zhpretrain.config import DataArguments

    def make(**kw):
        return DataArguments(**{"cache_dir": str(tmp_path / "cache"), **kw})
    return make
