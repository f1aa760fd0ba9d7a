"""Who owns an output_dir: the folder check, the lock, the run's identity, and which checkpoint is really complete."""
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import time
import warnings
from pathlib import Path

from . import cache
from .errors import UserError

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
LOCK = "zhpretrain.lock"
IDENTITY = "zhpretrain_run.json"
MANIFEST = "zhpretrain_manifest.json"
# Changes a resume can go on with when the user says so; the others make the checkpoint's weights meaningless.
CHANGES_ALLOWED = ("data", "training")


# ---- the folder itself

def is_run_folder(folder: Path) -> bool:
    """A folder this project wrote: it has our lock or identity file, or checkpoints, or a final model with data stats."""
    return any((folder / name).exists() for name in (LOCK, IDENTITY)) or \
        any(CHECKPOINT.match(p.name) for p in folder.iterdir()) or \
        ((folder / "final").is_dir() and (folder / "data_stats.json").is_file())


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


# ---- the run's identity

def read_identity(output_dir: Path) -> dict | None:
    try:
        return json.loads((output_dir / IDENTITY).read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, value) -> None:
    """Write a whole file or nothing: a run killed mid-write leaves the old file, never a cut one."""
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(value, indent=1, ensure_ascii=False))
    os.replace(tmp, path)


def write_identity(output_dir: Path, identity: dict) -> None:
    _write_json(output_dir / IDENTITY, identity)


def _data_view(source: dict) -> dict:
    """The data as content: file paths and modification times left out, so a moved or touched file is the same data."""
    def files(entries):
        return sorted((e["size"], e["sample"]) for e in entries or [])
    return {**source, "files": files(source.get("files")), "validation": files(source.get("validation"))}


def changes(old: dict, new: dict) -> dict[str, list[str]]:
    """What differs between two identities, by part (data, training, model, tokenizer), in words."""
    found = {}
    for part in new:
        if part not in old or old[part] == new[part]:
            continue
        if part == "data":
            a, b = _data_view(old[part]), _data_view(new[part])
            lines = [_describe_files(k, old[part].get(k), new[part].get(k)) for k in ("files", "validation") if a[k] != b[k]]
            lines += [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted((set(a) | set(b)) - {"files", "validation"}) if a.get(k) != b.get(k)]
        elif isinstance(new[part], dict):
            lines = [f"{k}: {old[part].get(k)!r} -> {new[part].get(k)!r}" for k in sorted(set(old[part]) | set(new[part]))
                     if old[part].get(k) != new[part].get(k)]
        else:
            lines = [f"{old[part]} -> {new[part]}"]
        if lines:
            found[part] = lines
    return found


def _describe_files(kind: str, old: list | None, new: list | None) -> str:
    old, new = old or [], new or []
    if len(old) == len(new) == 1:
        return f"{kind}: {new[0]['path']} was {old[0]['size']:,} bytes, is now {new[0]['size']:,} bytes" + \
            (" with other contents" if old[0]["size"] == new[0]["size"] else "")
    return f"{kind}: {len(old)} files ({sum(e['size'] for e in old):,} bytes) -> {len(new)} files ({sum(e['size'] for e in new):,} bytes)"


def check_identity(output_dir: Path, checkpoint: str, current: dict, allow: bool) -> bool:
    """Refuse to resume checkpoint when the run's identity changed; return True when it changed and `allow` lets it go on."""
    old = read_identity(output_dir)
    found = changes(old, current) if old else {}
    if not found:
        return False
    listed = "; ".join(f"{part}: " + ", ".join(lines) for part, lines in found.items())
    fixed = [part for part in found if part not in CHANGES_ALLOWED]
    if fixed:
        raise UserError(f"{output_dir} holds {Path(checkpoint).name} of another run: {listed}. Its weights only fit the "
                        f"{' and '.join(fixed)} they were trained with, so it cannot be resumed this way. Start a new --output_dir, "
                        "or run with the settings it was started with (see its zhpretrain_run.json).")
    if not allow:
        raise UserError(f"{output_dir} holds {Path(checkpoint).name} of a run started with other settings: {listed}. "
                        "Resuming would silently mix two runs. Start a new --output_dir, or pass --allow_resume_changes true to "
                        "continue this run with the new settings (it keeps the checkpoint's own tokenizer and model).")
    print(f"continuing {Path(checkpoint).name} with changed settings (--allow_resume_changes): {listed}", flush=True)
    return True


# ---- checkpoints

def checkpoint_problem(path: Path) -> str | None:
    """None when the checkpoint's state, weights, optimizer and scheduler load (and match their manifest); else what is wrong."""
    import torch
    from safetensors import safe_open

    try:
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError) as e:
        return f"trainer_state.json: {getattr(e, 'strerror', None) or e}"
    try:
        promised = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        promised = {}  # killed between the Trainer's save and ours: the loads below still decide
    except (OSError, ValueError):
        return f"{MANIFEST} is unreadable"
    found = cache.problems(path, promised)
    if found:
        return found[0]
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("pytorch_model*.bin"))
    sharded = any(path.glob("pytorch_model_fsdp_*")) or any(path.glob("optimizer_*")) or any(path.glob("global_step*"))
    if not weights and not sharded:
        return "no weights file (model.safetensors)"
    try:
        for f in weights:
            if f.suffix == ".safetensors":
                with safe_open(f, "pt") as handle:
                    handle.keys()
            else:
                torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        if not sharded:
            for name in ("optimizer.pt", "scheduler.pt"):
                f = path / name
                torch.load(f, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # safetensors, zip and pickle errors have many types: any failure to load means damaged
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


def finished_step(checkpoint: str | None, max_steps: int) -> int | None:
    """The step of a checkpoint already at this run's last step (the Trainer would train one step more on resume)."""
    if not checkpoint:
        return None
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    last = max_steps if max_steps > 0 else state["max_steps"]  # epoch-based runs: the total the Trainer computed then
    return state["global_step"] if 0 < last <= state["global_step"] else None


def write_manifest(checkpoint: Path) -> None:
    """Sizes and digests of the checkpoint's state, weights, optimizer and scheduler, so later damage is noticed."""
    files = [p for p in checkpoint.iterdir() if p.is_file() and (p.suffix in (".safetensors", ".bin", ".pt")
                                                                 or p.name == "trainer_state.json")]
    _write_json(checkpoint / MANIFEST, cache.manifest(files, checkpoint))


# ---- space

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
    good = last_checkpoint(folder.parent)
    kept = f"the newest complete checkpoint is {good}" if good else "no complete checkpoint was written yet"
    return UserError(f"Writing {folder} failed ({reason}). Nothing written before it was lost: {kept}. Free disk space, "
                     "fix the folder's permissions, raise the quota or file-size limit, or choose another --output_dir on a "
                     "writable disk; then run the same command to continue from there.")
