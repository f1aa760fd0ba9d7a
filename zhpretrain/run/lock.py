"""The lock on output_dir: one run trains in a folder at a time."""
import fcntl
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path

from ..errors import UserError

LOCK = "zhpretrain.lock"


class Lock:
    """An advisory lock on output_dir/zhpretrain.lock, held by the main process of a launch for the whole run.

    flock() is released by the kernel when the holder dies however it dies, so a stale lock never blocks; the file's
    text (host, pid, start time) says who holds it. The other ranks of the launch do not lock: their main process holds
    it for them, and a launch whose main process is refused is torn down by its launcher."""

    def __init__(self, output_dir: Path):
        self.path, self.file = output_dir / LOCK, None

    def acquire(self) -> None:
        self.file = open(self.path, "a+", encoding="utf-8")
        self.file.seek(0)
        previous = self.file.read().strip()
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            holder = _holder(previous)
            raise UserError(f"Another run is training in {self.path.parent}: {holder} holds {self.path}. Two runs in one "
                            "folder would overwrite each other's checkpoints and final/. Wait for it to finish, stop it "
                            "(Ctrl-C in its terminal), or give this run another --output_dir.") from None
        if previous:
            warnings.warn(f"{self.path} was left by {_holder(previous)}, which is no longer running (killed or crashed); "
                          "this run takes the folder over.", stacklevel=1)
        self.file.seek(0)
        self.file.truncate()
        self.file.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                    "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}))
        self.file.flush()

    def release(self) -> None:
        """Empty the file (a clean end) and unlock; the file stays, so no other process can lock a replaced one."""
        if self.file is not None and not self.file.closed:
            self.file.seek(0)
            self.file.truncate()
            self.file.close()


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"process {info['pid']} on host {info['host']} (started {info['started']}: {info.get('command', '')})"
    except (ValueError, KeyError, TypeError):
        return "another process"

