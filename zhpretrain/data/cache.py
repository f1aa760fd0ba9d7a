"""Cache folders: named by a digest of their inputs, written atomically, verified against their manifest before use."""
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError

CACHE_MANIFEST = "manifest.json"
CHUNK = 1 << 22


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def folder(root: Path, kind: str, key: dict) -> Path:
    """Where the cache of this kind built from exactly these inputs lives."""
    return Path(root) / f"{kind}-{key_digest(key)}"


def file_digest(path: Path) -> str:
    digest = hashlib.blake2b()
    with open(path, "rb") as f:  # a plain loop, not hashlib.file_digest: that needs Python 3.11
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()[:32]


def manifest(files: list[Path], base: Path) -> dict:
    """Size and content digest of each file, by its path relative to base."""
    return {str(p.relative_to(base)): {"size": p.stat().st_size, "blake2b": file_digest(p)} for p in sorted(files)}


def problems(base: Path, promised: dict) -> list[str]:
    """What differs between the files in base and what a manifest promised (empty: they match)."""
    found = []
    for name, want in promised.items():
        path = base / name
        try:
            size = path.stat().st_size
        except OSError:
            found.append(f"{name} is missing")
            continue
        if size != want["size"]:
            found.append(f"{name} is {size:,} bytes, {want['size']:,} were written")
        elif file_digest(path) != want["blake2b"]:
            found.append(f"{name} has other contents than were written (checksum mismatch)")
    return found


def verify(path: Path) -> str | None:
    """None when the folder holds exactly the files its manifest promises; otherwise what is wrong."""
    try:
        promised = json.loads((path / CACHE_MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{CACHE_MANIFEST} is missing or unreadable"
    found = problems(path, promised)
    return "; ".join(found) or None


def _temp_prefix(name: str) -> str:
    return f".{name}.tmp-"


def _owner_alive(temp: Path) -> bool:
    """A temporary folder is named .<name>.tmp-<host>-<pid>-<random>: its builder is alive unless it ran on this
    host and its pid is gone."""
    try:
        host, pid = temp.name.rsplit(".tmp-", 1)[1].rsplit("-", 2)[:2]
        pid = int(pid)
    except ValueError:
        return True
    return host != socket.gethostname() or pid_alive(pid)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def clean_stale(root: Path) -> list[Path]:
    """Remove temporary folders that builders killed on this host left behind; return them."""
    removed = []
    if not Path(root).is_dir():
        return removed
    for p in Path(root).iterdir():
        if p.name.startswith(".") and ".tmp-" in p.name and p.is_dir() and not _owner_alive(p):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    if removed:
        print(f"removed {len(removed)} unfinished cache folder(s) left in {root} by a killed run", flush=True)
    return removed


def write(path: Path, fill: Callable[[Path], None]) -> None:
    """Let fill() write the files into a temporary folder, add their manifest, and rename it into place.

    A killed run never leaves a folder at `path` that looks whole; its temporary folder is removed by the next run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{_temp_prefix(path.name)}{socket.gethostname()}-{os.getpid()}-"))
    try:
        fill(tmp)
        files = [p for p in tmp.rglob("*") if p.is_file()]
        (tmp / CACHE_MANIFEST).write_text(json.dumps({"files": manifest(files, tmp)}, indent=1))
        try:
            os.rename(tmp, path)
        except OSError:  # another node sharing this cache finished first: keep its copy
            if not path.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def node() -> str:
    """This machine among those that may share a cache_dir: its host name, and the node rank torchrun gives
    (GROUP_RANK, also set under srun: two machines can have one host name, in containers)."""
    rank = os.environ.get("GROUP_RANK")
    return socket.gethostname() + (f"-node{rank}" if rank else "")


def _verdict_file(path: Path) -> Path:
    """Where this machine's builder of `path` leaves its verdict: one per machine, so that on a cache_dir that several
    nodes share, each node's waiters hear their own builder's failure or success, never another node's."""
    return path.parent / f".{path.name}.verdict-{node()}"


def _write_verdict(path: Path, error: str | None) -> None:
    file = _verdict_file(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f"{file.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"time": time.time(), "error": error}))
    os.replace(tmp, file)  # whole or not at all: a waiter never reads half a verdict


def _read_verdict(path: Path, since: float) -> dict | None:
    """This machine's verdict on `path` if it was given after `since`; None while there is none that recent."""
    try:
        verdict = json.loads(_verdict_file(path).read_text())
    except (OSError, ValueError):
        return None
    return verdict if isinstance(verdict, dict) and verdict.get("time", 0) >= since else None


def process_start() -> float:
    """When this process started, by the wall clock, to 10 ms: from Linux's ticks since boot (psutil's create_time adds
    them to a boot time in whole seconds, up to a second early)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):  # not Linux
        import psutil

        return psutil.Process().create_time()


def _build(path: Path, fill: Callable[[Path], None], what: str) -> None:
    """Verify the folder at `path`; move it aside when damaged (with a warning); write it when it is not there."""
    clean_stale(path.parent)
    if path.exists():
        problem = verify(path)
        if problem is None:
            return
        warnings.warn(f"The {what} {path} is damaged ({problem}); rebuilding it.", stacklevel=1)
        aside = path.parent / f".{path.name}.damaged-{os.getpid()}"  # renamed first: no waiter reads a half-removed folder
        try:
            os.rename(path, aside)
        except FileNotFoundError:  # another node sharing this cache moved it first
            pass
        shutil.rmtree(aside, ignore_errors=True)
    write(path, fill)


def once(path: Path, fill: Callable[[Path], None], builder: bool, what: str) -> None:
    """Make sure a verified cache folder is at `path`: built or verified by one process per machine (`builder`), whose
    verdict the others on that machine wait for, so a 2 GB token cache is hashed once per machine, not once per rank.

    Waiting on the file system instead of a collective barrier means no rank can hit the process-group timeout while a
    corpus is tokenized. A waiter takes only a verdict given after its process started (an older one is an earlier
    launch's): in pretrain.py every process passes a barrier (main_process_first, around the hub download) before any
    of them gets here, so this launch's builder always speaks after its waiters started."""
    if builder:
        try:
            _build(path, fill, what)
        except BaseException as e:
            if not isinstance(e, KeyboardInterrupt):  # Ctrl-C reaches the waiters too
                _write_verdict(path, str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}")
            raise
        if "WORLD_SIZE" in os.environ and os.environ.get("LOCAL_WORLD_SIZE") != "1":  # else no one waits here
            _write_verdict(path, None)
        return
    since = process_start()
    announced = False
    while (verdict := _read_verdict(path, since)) is None:
        if not announced and not path.exists():  # an existing folder is being verified: a moment, nothing to say
            print(f"waiting for the main process to write the {what} {path} ...", flush=True)
            announced = True
        time.sleep(1)
    if verdict["error"] is not None:
        raise UserError(f"The process building the {what} {path} failed, so this one stops too: {verdict['error']}")
