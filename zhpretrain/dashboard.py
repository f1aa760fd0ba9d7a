"""Screenshot a run in the local SwanLab dashboard (`swanlab watch`) with headless Chromium, after checking its charts have points.

    python -m zhpretrain.dashboard swanlog --experiment demo --out images/dashboard.png

Needs `swanlab[dashboard]` and a Chromium (Debian: apt-get install chromium fonts-noto-cjk). Only local-mode runs
are shown by the dashboard; offline-mode runs are not.
"""
import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError, cli

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# No first-run UI, no update checks or sync, no GPU: a bare browser that talks only to 127.0.0.1.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars")
WINDOW = (1400, 2200)  # tall enough for every chart of a run, train/loss included
BUDGET_MS = 10_000  # virtual time the page's scripts get to fetch the curves and draw them


def browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 5):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


@contextmanager
def serve(swanlog, timeout: float = 60):
    """Run `swanlab watch` on a free port of 127.0.0.1 until the block ends; yield its base URL once it answers."""
    if not (Path(swanlog) / "runs.swanlab").is_file():
        raise UserError(f"'{swanlog}' holds no SwanLab dashboard database (runs.swanlab): it is not a swanlog folder of a run "
                        "in local mode. Train with --swanlab_mode local and pass its --swanlab_log_dir (default: swanlog).")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a pipe nobody reads would stall a chatty server
    server = subprocess.Popen([sys.executable, "-m", "swanlab", "watch", str(swanlog), "-h", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout
        while True:  # a server coming up has no event to wait on: poll it, with a deadline
            if server.poll() is not None:
                log.seek(0)
                last = ([line for line in log.read().splitlines() if line.strip()] or ["(no output)"])[-1]
                raise UserError(f"`swanlab watch {swanlog}` exited with {server.returncode}; its last line: {last.strip()}. "
                                "Check that the folder is a SwanLab log folder and that pip install 'swanlab[dashboard]' was run.")
            try:
                get(f"{base}/api/v1/project", timeout=2)
                break
            except (OSError, ValueError):
                if time.monotonic() > deadline:
                    raise UserError(f"`swanlab watch {swanlog}` did not answer on {base} within {timeout:.0f} s.") from None
                time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def experiments(base: str, name: str | None = None) -> list[dict]:
    """The experiments with this name (all when None) in the dashboard's project list. SwanLab's local mode names a
    second experiment of one name NAME-1, a third NAME-2 (deprecated/local.py): a resumed run's are found too."""
    same = re.compile(re.escape(name) + r"(-\d+)?") if name is not None else None
    found = [e for e in get(f"{base}/api/v1/project")["data"].get("experiments") or [] if same is None or same.fullmatch(e["name"])]
    if not found:
        raise UserError(f"The SwanLab dashboard at {base} has no experiment" + (f" named '{name}'" if name else "") +
                        ". The experiment name is the run's output_dir name unless --swanlab_experiment_name set it; "
                        "pass it with --experiment.")
    return found


def points(base: str, experiment_id: int, tag: str = "train/loss") -> list[tuple[int, float]]:
    """(step, value) of one chart, as the dashboard's API serves it to the page."""
    try:
        answer = get(f"{base}/api/v1/experiment/{experiment_id}/tag/{tag}")
    except urllib.error.HTTPError:
        return []
    return [(p["index"], p["data"]) for p in (answer.get("data") or {}).get("list") or []]


def chromium(url: str, *args: str, timeout: float = 120) -> str:
    """Run headless Chromium on url with a throw-away profile; return what it printed on stdout."""
    path = browser()
    if path is None:
        raise UserError("No Chromium found (looked for " + ", ".join(BROWSERS) + "). Debian/Ubuntu: apt-get install chromium "
                        "fonts-noto-cjk.")
    with tempfile.TemporaryDirectory(prefix="zhpretrain-chromium-") as profile:
        done = subprocess.run([path, *FLAGS, f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                               f"--virtual-time-budget={BUDGET_MS}", *args, url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    if done.returncode != 0:
        raise UserError(f"Chromium failed on {url} (exit {done.returncode}): {done.stderr[-800:]}")
    return done.stdout


def screenshot(swanlog, out, name: str | None = None, tag: str = "train/loss") -> dict:
    """Screenshot the experiment's chart page into out; return its URL, the chart's points and the rendered page (DOM)."""
    out = Path(out)
    if out.is_dir() or any(p.exists() and not p.is_dir() for p in out.parents):
        raise UserError(f"--out '{out}' must be a PNG file name in a folder, and "
                        + ("it is a folder." if out.is_dir() else "a file stands where a folder of its path should be."))
    out.parent.mkdir(parents=True, exist_ok=True)
    with serve(swanlog) as base:
        # Each start of a run in local mode is an experiment of its own (SwanLab 0.10 reopens none), an interrupted first
        # start among them: the one that holds the whole curve has the most points; the newest of those.
        curve, exp = max(((points(base, e["id"], tag), e) for e in experiments(base, name)), key=lambda c: (len(c[0]), c[1]["id"]))
        if not curve:
            raise UserError(f"The dashboard's chart {tag} of experiment '{exp['name']}' has no points: nothing to screenshot.")
        url = f"{base}/experiment/{exp['id']}"
        page = chromium(url, "--dump-dom")
        chromium(url, f"--screenshot={out.resolve()}")
    if not out.is_file():
        raise UserError(f"Chromium wrote no screenshot to {out}.")
    print(f"wrote {out} ({exp['name']}: {len(curve)} points of {tag})", flush=True)
    return {"url": url, "experiment": exp, "points": curve, "page": page}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m zhpretrain.dashboard", description=__doc__.splitlines()[0])
    p.add_argument("swanlog", help="SwanLab log folder of local-mode runs (the run's --swanlab_log_dir, default swanlog)")
    p.add_argument("--experiment", help="experiment name (default: the newest experiment)")
    p.add_argument("--out", default="images/dashboard.png", help="PNG file to write")
    args = p.parse_args(argv)
    screenshot(args.swanlog, args.out, args.experiment)
    return 0


if __name__ == "__main__":
    cli(main)
