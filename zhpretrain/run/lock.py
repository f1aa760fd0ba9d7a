"""The lock on output_dir: one run trains in a folder at a time."""
import errno
import fcntl
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path

from .. import secret
from ..data.cache import pid_alive
from ..errors import UserError

LOCK = "zhpretrain.lock"


class Lock:
    """An advisory lock on output_dir/zhpretrain.lock, held by the main process of a launch for the whole run.

    flock() is released by the kernel when the holder dies however it dies, so a stale lock never blocks; the file's
    text (host, pid, start time) says who holds it. The other ranks of the launch do not lock: their main process holds
    it for them, and a launch whose main process is refused is torn down by its launcher.

    The file records the command with its secrets redacted (secret.py): it is world-readable and outlives a crash.
    A file system without flock (Lustre or GPFS mounted without it) gets a warning, and the pid in the file, checked on
    this host only, stands in for the lock."""

    def __init__(self, output_dir: Path):
        self.path, self.file, self.created = output_dir / LOCK, None, False

    def acquire(self) -> None:
        while True:
            self.created = not self.path.exists()
            self.file = open(self.path, "a+", encoding="utf-8")
            self.file.seek(0)
            previous = self.file.read().strip()
            try:
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.file.close()
                raise self._busy(previous) from None
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                warnings.warn(f"{self.path} cannot be locked ({e.strerror}: this file system has no flock), so two runs "
                              "started in this folder from different hosts would not stop each other; this host's runs "
                              "still do.", stacklevel=1)
                if _alive_here(previous):
                    self.file.close()
                    raise self._busy(previous) from None
            if _same(self.path, self.file):
                break
            self.file.close()  # the holder removed the file as we locked it (see release): lock the one now there
        if previous:
            warnings.warn(f"{self.path} was left by {_holder(previous)}, which is no longer running (killed or crashed); "
                          "this run takes the folder over.", stacklevel=1)
        self.file.seek(0)
        self.file.truncate()
        self.file.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                    "command": " ".join(secret.command(sys.argv))}))
        self.file.flush()

    def _busy(self, previous: str) -> UserError:
        return UserError(f"Another run is training in {self.path.parent}: {_holder(previous)} holds {self.path}. Two runs in "
                         "one folder would overwrite each other's checkpoints and final/. Wait for it to finish, stop it "
                         "(Ctrl-C in its terminal), or give this run another --output_dir.")

    def release(self) -> None:
        """Empty the file (a clean end) and unlock. The file stays as the proof that this is a run folder, unless this
        run created it and left nothing else in the folder (it failed before writing anything, e.g. on bad data): then
        no stray lock file is left. Removing it is safe: a run that locked the removed file sees it and locks again."""
        if self.file is not None and not self.file.closed:
            self.file.seek(0)
            self.file.truncate()
            if self.created and [p.name for p in self.path.parent.iterdir()] == [LOCK]:
                self.path.unlink(missing_ok=True)
            self.file.close()


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"process {info['pid']} on host {info['host']} (started {info['started']}: {secret.text(info.get('command', ''))})"
    except (ValueError, KeyError, TypeError):
        return "another process"


def _same(path: Path, file) -> bool:
    try:
        a, b = os.stat(path), os.fstat(file.fileno())
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _alive_here(text: str) -> bool:
    try:
        info = json.loads(text)
        return info["host"] == socket.gethostname() and int(info["pid"]) != os.getpid() and pid_alive(int(info["pid"]))
    except (ValueError, KeyError, TypeError):
        return False

