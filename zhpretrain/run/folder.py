"""The output_dir itself: refuse a folder that is not a run's, check it can be written, and check the disk has room."""
import os
import shutil
import socket
from pathlib import Path

from ..errors import UserError
from . import checkpoint
from .lock import LOCK, Lock
from .resume import IDENTITY


def is_run_folder(folder: Path) -> bool:
    """A folder this project wrote: it has our lock or identity file, or a checkpoint holding our manifest. Names a user
    may have chosen too (final/, data_stats.json, checkpoint-N/ of another tool) prove nothing."""
    return any((folder / name).exists() for name in (LOCK, IDENTITY)) or \
        any(checkpoint.CHECKPOINT.match(p.name) and (p / checkpoint.MANIFEST).is_file() for p in folder.iterdir())


def check_folder(output_dir: Path, allow_existing: bool) -> None:
    """Refuse to write into /, the home folder, or a non-empty folder that is not a run folder of this project."""
    resolved = output_dir.expanduser().resolve()
    if resolved == Path(resolved.anchor) or resolved == Path.home().resolve():
        raise UserError(f"output_dir '{output_dir}' is {'the root folder' if resolved == Path(resolved.anchor) else 'your home folder'}: "
                        "a run writes checkpoint-N/, final/ and more into it. Give a folder of its own, e.g. --output_dir runs/my-run.")
    if resolved.is_dir() and any(resolved.iterdir()) and not is_run_folder(resolved) and not allow_existing:
        shown = ", ".join(sorted(p.name for p in resolved.iterdir())[:5])
        raise UserError(f"output_dir '{output_dir}' already holds files that are not from a run of this project ({shown}, ...), "
                        "and a run would write checkpoint-N/, final/ and data_stats.json among them. Give a new or empty "
                        "--output_dir, or pass --allow_existing_output_dir true to write into it anyway.")



def writable(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{socket.gethostname()}-{os.getpid()}"  # one per process: ranks share the folder
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise UserError(f"{what} '{folder}' cannot be written ({e.strerror}). Choose another --{what}.") from None


def setup(training_args, data_args, run_args) -> tuple[Path, Lock]:
    """Check the folders we write, set up the process group the way the Trainer will use it (gloo on CPU, NCCL on GPUs),
    and lock output_dir for this run (the main process holds the lock for the whole launch)."""
    import torch

    output_dir = Path(training_args.output_dir)
    training_args.ddp_find_unused_parameters = False
    training_args.dataloader_pin_memory &= torch.cuda.is_available()
    training_args.report_to = [r for r in training_args.report_to if r != "swanlab"]  # we add SwanLab's callback ourselves
    training_args.device  # noqa: B018  (reading it initialises the process group, if parsing has not already)
    check_folder(output_dir, run_args.allow_existing_output_dir)
    if torch.distributed.is_initialized():
        # Every rank looks at output_dir before any rank writes its probe or the lock into it: otherwise a fast rank's
        # probe file makes a slow rank see a foreign, non-empty folder and refuse it.
        torch.distributed.barrier()
    writable(output_dir, "output_dir")
    writable(data_args.cache_root(), "cache_dir")
    lock = Lock(output_dir)
    if training_args.process_index == 0:
        lock.acquire()
    return output_dir, lock


def checkpoint_bytes(parameters: int, bytes_per_parameter: int = 4) -> int:
    """A checkpoint holds the weights and AdamW's two moments (each as large as the weights), plus small files."""
    return 3 * parameters * bytes_per_parameter + (1 << 20)


def space_problem(folder: Path, needed: int, what: str) -> str | None:
    free = shutil.disk_usage(folder).free
    if free >= needed:
        return None
    return f"{folder} has {free / 1e9:.2f} GB free and {what} needs about {needed / 1e9:.2f} GB"


def save_error(folder: Path, error: BaseException) -> UserError:
    """A save that failed, as one paragraph: where, why, what was kept, what to do.

    A full disk, a quota, a read-only file system or a file-size limit reach us as an OSError from Python's writers but
    as cryptic RuntimeErrors from torch's ("basic_ios::clear: iostream error"), so every failure to save is reported
    this way, with the underlying message kept."""
    chain = [e for e in (error, error.__cause__, error.__context__) if e is not None]
    os_error = next((e for e in chain if isinstance(e, OSError) and e.strerror), None)
    reason = os_error.strerror if os_error else f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
    if folder.parent.exists() and space_problem(folder.parent, 1 << 20, "more"):
        reason += "; the disk is full"
    good = checkpoint.last_checkpoint(folder.parent)
    kept = f"the newest complete checkpoint is {good}" if good else "no complete checkpoint was written yet"
    return UserError(f"Writing {folder} failed ({reason}). Nothing written before it was lost: {kept}. Free disk space, "
                     "fix the folder's permissions, raise the quota or file-size limit, or choose another --output_dir on a "
                     "writable disk; then run the same command to continue from there.")
