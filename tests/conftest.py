"""Shared fixtures: the repo paths, the shared sample data (skipped when absent, a failure under CI), tiny corpora and
argument objects, and the `slow` marker."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `pytest` as well as `python -m pytest` finds pretrain.py and the package
SHARED = REPO.parent / "shared" / "data"
DEMO = REPO / "data" / "demo-zhwiki.jsonl"


def pytest_configure(config):
    # Registered here: the repo's top level holds no pytest.ini. `make test` deselects these with -m "not slow".
    config.addinivalue_line("markers", "slow: an end-to-end scenario of a minute or more; run by `make test-all` and CI")


def shared(name: str) -> Path:
    path = SHARED / name
    if not path.is_file():
        message = f"{path} is not here (../shared is absent)"
        if os.environ.get("CI", "").lower() in ("true", "1"):  # CI must run these tests, not quietly skip them
            pytest.fail(message + " and CI is set", pytrace=False)
        pytest.skip(message)
    return path


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def run_pretrain(*args, cwd=REPO, timeout=600, env=None):
    """Run pretrain.py as a user would; return the CompletedProcess (stdout and stderr merged)."""
    return subprocess.run([sys.executable, str(REPO / "pretrain.py"), *map(str, args)], cwd=cwd, env=env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def heavy_imports_after_help(module: str, call: str) -> str:
    """The last line printed by a fresh interpreter that imports zhpretrain.<module> and runs <call> with --help:
    'loaded: [...]', the ones of torch and transformers (seconds to import) that were loaded by then."""
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r})\nfrom zhpretrain import {module}\ntry:\n    {call}(['--help'])\n"
            "except SystemExit:\n    pass\nprint('loaded:', sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return (out.stdout.splitlines() or [out.stderr[-500:]])[-1]


def failure(out: str) -> str:
    """What a failed run printed, for an assertion message: every rank's `error:` paragraph first (a launcher's
    teardown traceback can bury it), then the tail."""
    errors = [line for line in out.splitlines() if re.match(r"(\[rank\d+\]:\s*)?error: ", line)]
    return "\n".join(errors[:10]) + "\n...\n" + out[-3000:]


def start_pretrain(args, cwd, env=None) -> subprocess.Popen:
    """Start pretrain.py in its own session (so a test can signal it alone); a thread collects its output into
    proc.output (a list of str) as it comes."""
    import threading

    env = {**(env or os.environ), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(REPO / "pretrain.py"), *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    proc.output = []

    def read():
        while chunk := os.read(proc.stdout.fileno(), 4096):
            proc.output.append(chunk.decode(errors="replace"))
    proc.reader = threading.Thread(target=read, daemon=True)
    proc.reader.start()
    return proc


@pytest.fixture
def data_args(tmp_path):
    from zhpretrain.config import DataArguments

    def make(**kw):
        return DataArguments(**{"cache_dir": str(tmp_path / "cache"), **kw})
    return make
