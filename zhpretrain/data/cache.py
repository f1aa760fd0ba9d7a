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


def _failure_marker(path: Path) -> Path:
    return path.parent / f".{path.name}.failed"


def once(path: Path, fill: Callable[[Path], None], builder: bool, what: str) -> None:
    """Make sure a verified cache folder is at `path`: built by one process per node (`builder`), waited for by the others.

    A damaged folder is moved aside and rebuilt, with a warning. Waiting on the file system instead of a collective
    barrier means no rank can hit the process-group timeout while a 2 GB corpus is tokenized; a builder that fails
    leaves a marker, so the waiting ranks stop with its error instead of waiting forever."""
    marker = _failure_marker(path)
    if builder:
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
        marker.unlink(missing_ok=True)
        try:
            write(path, fill)
        except BaseException as e:
            if not isinstance(e, KeyboardInterrupt):
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}")
            raise
        return
    start = time.time()
    announced = False
    while True:
        if path.exists() and verify(path) is None:
            return
        try:
            if marker.stat().st_mtime >= start - 1:
                raise UserError(f"The process building the {what} {path} failed, so this one stops too: "
                                f"{marker.read_text()}")
        except FileNotFoundError:
            pass
        if not announced:
            print(f"waiting for the main process to write the {what} {path} ...", flush=True)
            announced = True
        time.sleep(2)

