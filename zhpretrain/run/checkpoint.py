"""Checkpoints: which one is really complete (every file loads and matches its manifest), the files this project
writes into each beside the Trainer's own, and its step when it already finished."""
import json
import os
import re
import shutil
import threading
import warnings
from pathlib import Path

from ..data import cache

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
MANIFEST = "zhpretrain_manifest.json"
# The side files, written just before the Trainer writes its own (and trainer_state.json, the mark of a complete
# checkpoint, last), read back only through read_side (resume.py decides what they mean).
SHAPE = "zhpretrain_shape.json"  # the global batch (resume.check_shape)
BUDGET = "zhpretrain_budget.json"  # the time budget's clock and schedule (train/budget.py)
STREAM = "stream_rank{rank}.json"  # each rank's stream position (data/stream.py)


def write_json(path: Path, value) -> None:
    """Write a whole file or nothing: a run killed mid-write leaves the old file, never a cut one."""
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(value, indent=1, ensure_ascii=False))
    os.replace(tmp, path)


def write_side_files(folder: Path, files: dict) -> None:
    """This process's side files ({name: JSON value}) into checkpoint folder, before the Trainer's save."""
    if files:
        folder.mkdir(parents=True, exist_ok=True)
        for name, value in files.items():
            write_json(folder / name, value)


def read_side(checkpoint: str, name: str) -> dict | None:
    """A side file of checkpoint, or None when it has none."""
    path = Path(checkpoint) / name
    return json.loads(path.read_text()) if path.is_file() else None


def checkpoint_problem(path: Path) -> str | None:
    """None when every file of the checkpoint matches its manifest and what a resume reads loads; else what is wrong.

    What a resume reads: trainer_state.json (with its step), the weights, the optimizer, the scheduler, the RNG states
    and every JSON side file. A checkpoint without a manifest (the run died between the Trainer's save and ours) is
    judged by those loads alone."""
    try:
        state = json.loads((path / "trainer_state.json").read_text())
        if not (isinstance(state, dict) and isinstance(state.get("global_step"), int) and isinstance(state.get("log_history"), list)):
            return "trainer_state.json holds no step and log history"
    except (OSError, ValueError) as e:
        return f"trainer_state.json: {getattr(e, 'strerror', None) or e}"
    try:
        promised = json.loads((path / MANIFEST).read_text())
        if not isinstance(promised, dict):
            raise ValueError
    except FileNotFoundError:
        promised = {}  # killed between the Trainer's save and ours: the loads below still decide
    except (OSError, ValueError):
        return f"{MANIFEST} is unreadable"
    try:
        found = cache.problems(path, promised)
    except (KeyError, TypeError, AttributeError):
        return f"{MANIFEST} is unreadable"
    if found:
        return found[0]
    return _load_problem(path)


def _load_problem(path: Path) -> str | None:
    import torch
    from safetensors import safe_open
    from transformers.trainer_pt_utils import safe_globals  # what the Trainer allows when it loads the RNG states

    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("pytorch_model*.bin"))
    sharded = any(path.glob("pytorch_model_fsdp_*")) or any(path.glob("optimizer_*")) or any(path.glob("global_step*"))
    if not weights and not sharded:
        return "no weights file (model.safetensors)"
    f = path
    try:
        for f in weights:
            if f.suffix == ".safetensors":
                with safe_open(f, "pt") as handle:
                    handle.keys()
            else:
                torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        if not sharded:
            for f in (path / "optimizer.pt", path / "scheduler.pt"):
                torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        for f in sorted(path.glob("rng_state*.pth")):
            with safe_globals():
                torch.load(f, map_location="cpu", weights_only=True)
        for f in sorted(path.glob("*.json")):
            json.loads(f.read_text())
    except Exception as e:  # safetensors, zip, pickle and JSON errors have many types: any failure to load means damaged
        return f"{f.name} does not load ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return None


def last_checkpoint(output_dir: Path, move_aside: bool = False) -> str | None:
    """The newest checkpoint that really loads. Newer ones that do not are skipped with a warning naming the file, and the
    main process moves them aside (`move_aside`: damaged-checkpoint-N), so the Trainer neither resumes nor rotates them."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT.match(p.name)) and p.is_dir())
    for _, path in reversed(found):
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        partial = not (path / "trainer_state.json").exists()  # the Trainer writes it last: the run died while saving
        aside = path.parent / f"damaged-{path.name}"
        if move_aside:
            if partial:
                shutil.rmtree(path, ignore_errors=True)
            else:  # kept for a look: it was whole once
                shutil.rmtree(aside, ignore_errors=True)
                os.rename(path, aside)
        done = "" if not move_aside else " (removed: its run died while writing it)" if partial else f" (moved to {aside.name})"
        warnings.warn(f"{path} is incomplete or damaged ({problem}); skipping it{done}.", stacklevel=1)
    return None


def write_manifest(checkpoint: Path) -> None:
    """Sizes and digests of every file of the checkpoint (sharded weights' subfolders included), so later damage to any
    of them is noticed and the checkpoint is skipped instead of crashing the resume."""
    files = [p for p in checkpoint.rglob("*") if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")]
    write_json(checkpoint / MANIFEST, cache.manifest(files, checkpoint))


class PendingManifest:
    """write_manifest(checkpoint) in a thread of its own, started once every file of the checkpoint is written, so that
    training goes on while its files are hashed (reading and hashing release the GIL). Until the manifest appears the
    checkpoint is judged by its loads alone (checkpoint_problem), as after a kill between the Trainer's save and ours.
    Not a daemon: a run that ends on an error still finishes the manifest before the interpreter exits."""

    def __init__(self, checkpoint: Path):
        self.checkpoint, self.error = checkpoint, None
        self.thread = threading.Thread(target=self._run, name=f"manifest of {checkpoint.name}")
        self.thread.start()

    def _run(self) -> None:
        try:
            write_manifest(self.checkpoint)
        except BaseException as e:  # handed to wait(): a thread's exception would only be printed
            self.error = e

    def wait(self) -> None:
        """Until the manifest is written; raise what writing it raised."""
        self.thread.join()
        if self.error is not None:
            raise self.error
