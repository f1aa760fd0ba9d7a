"""Find the data files (a path, a folder or a glob), open them (decompressing), and fingerprint their content."""
import bz2
import glob
import gzip
import importlib.util
import json
import lzma
import os
import re
import time
from pathlib import Path

from ..errors import UserError
from . import cache

SUFFIXES = (".jsonl", ".json", ".parquet", ".txt")
COMPRESSED = (".gz", ".bz2", ".xz", ".zst")
# Files a downloaded dataset folder holds beside its data: never trained on, never reported as malformed.
METADATA = {"dataset_info.json", "dataset_infos.json", "dataset_dict.json", "state.json", "config.json", "configuration.json",
            "manifest.json"}
NOT_DATA_PREFIXES = ("readme", "license", "licence", "copying", "notice", "citation", "changelog")


def _is_data(path: Path, top: Path) -> bool:
    """The rule for files found in a directory or by a glob (see the README): a data file ends in a data suffix (optionally
    compressed), is not hidden nor inside a hidden folder, and is not a README, LICENSE or dataset metadata file."""
    parts = path.relative_to(top).parts if path.is_relative_to(top) else (path.name,)
    name = path.name.lower()
    return (not any(p.startswith(".") for p in parts) and name not in METADATA and not name.startswith(NOT_DATA_PREFIXES)
            and _plain_name(name).endswith(SUFFIXES))


def _plain_name(name: str) -> str:
    return name.removesuffix(next((c for c in COMPRESSED if name.endswith(c)), ""))


def _run_folders(found: list[str], top: Path, exclude: tuple) -> set[str]:
    """The files among found that a run wrote, never its data: those in an excluded folder below top (the cache_dir),
    in a run folder of this project (run/folder.py says which: the lock, written before any data is read, marks an
    output_dir from its first run on) or in a SwanLab log folder (each of its runs holds files/swanlab-metadata.json)."""
    from ..run.folder import is_run_folder

    top = top.resolve()
    roots = {r for r in (Path(e).resolve() for e in exclude) if r != top and r.is_relative_to(top)}  # data inside a cache stays data
    verdict = {}

    def written(folder: Path) -> bool:
        if folder not in verdict:
            verdict[folder] = folder in roots or is_run_folder(folder) or (folder / "files" / "swanlab-metadata.json").is_file()
        return verdict[folder]
    own = set()
    for p in found:
        here = Path(p).resolve().parent
        if any(written(f) for f in (here, *here.parents) if f.is_relative_to(top)):
            own.add(p)
    return own


def data_files(spec: str, what: str = "train_file", exclude: tuple = (), say: bool = False) -> tuple[list[str], list[str]]:
    """Expand a path, directory or glob into (data files, files skipped as not data), or say clearly why there are none.

    A directory or glob never yields what a run wrote (see _run_folders): an output_dir, cache_dir or SwanLab log folder
    inside the data folder would otherwise add the run's checkpoints, final/ and logs to its data on the next run."""
    if any(c in spec for c in "*?["):
        found = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        if not found:
            raise UserError(f"{what} '{spec}' matches no file. Check the pattern (quote it so the shell does not expand it).")
        fixed = re.split(r"[*?[]", spec, maxsplit=1)[0]  # the part before the first wildcard: its folder is the top
        top = Path(fixed[:fixed.rfind(os.sep) + 1] or ".")
    elif os.path.isdir(spec):
        found, top = sorted(str(p) for p in Path(spec).rglob("*") if p.is_file()), Path(spec)
    elif os.path.isfile(spec):
        if not _plain_name(spec.lower()).endswith(SUFFIXES):
            raise UserError(f"{what}: cannot read '{spec}': data files must end in {', '.join(SUFFIXES)} "
                            f"(optionally compressed: {', '.join(COMPRESSED)}).")
        _check_readable(spec)
        return [spec], []  # a file named on purpose is read, hidden or not
    else:
        raise UserError(f"{what} '{spec}' does not exist. Give a file, a directory or a glob of {', '.join(SUFFIXES)} files.")
    own = _run_folders(found, top, exclude)
    if own and say:
        print(f"{what}: left out {len(own):,} files that a run wrote (its output_dir, cache_dir or SwanLab logs), never "
              f"data: {', '.join(sorted(own)[:3])}{' ...' if len(own) > 3 else ''}", flush=True)
    paths = [p for p in found if p not in own and _is_data(Path(p), top)]
    if not paths:
        kind = "is a directory with no data files in it" if os.path.isdir(spec) else "matches no data files"
        raise UserError(f"{what} '{spec}' {kind} ({', '.join(SUFFIXES)}, optionally compressed); skipped: "
                        f"{', '.join(found[:5]) or 'nothing'}.")
    for p in paths:
        _check_readable(p)
    return paths, [p for p in found if p not in set(paths) and p not in own]


def find_files(spec: str, what: str = "train_file", exclude: tuple = ()) -> list[str]:
    return data_files(spec, what, exclude)[0]


def train_files(data_args, say: bool = False) -> tuple[list[str], list[str]]:
    """The training files of the data options, without what a run wrote (the cache_dir among it): the one way every
    reader of them finds them, so the key and the reading agree. `say`: print what was left out."""
    return data_files(data_args.train_file, "train_file", (data_args.cache_root(),), say)


def validation_files(data_args) -> list[str]:
    return find_files(data_args.validation_file, "validation_file", (data_args.cache_root(),))


def _check_readable(path: str) -> None:
    name = path.lower()
    if name.endswith(".zst") and importlib.util.find_spec("zstandard") is None:
        raise UserError(f"{path} is zstd-compressed and the zstandard package is not installed. Run `pip install zstandard`, "
                        f"or decompress it first with `zstd -d {path}`.")
    if _plain_name(name).endswith(".parquet") and name != _plain_name(name):
        raise UserError(f"{path}: a compressed parquet file cannot be read (parquet compresses its own columns). "
                        "Decompress it first.")


def _open(path: str):
    """The file's bytes, decompressed when its name says it is compressed (byte offsets count decompressed bytes)."""
    name = path.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".bz2"):
        return bz2.open(path, "rb")
    if name.endswith(".xz"):
        return lzma.open(path, "rb")
    if name.endswith(".zst"):
        import zstandard

        return zstandard.open(path, "rb")
    return open(path, "rb")


def fingerprint(paths: list[str], memo: Path | None = None) -> list[dict]:
    """Each file's path, size, modification time and a blake2b of all its bytes ("sample": the name the run identities
    written before kept, when it was a digest of 16 windows of the file; an in-place edit between them went unseen).

    The cache keys use all of it; a run's identity compares size and content only, so a copied or touched file is the
    same data and a grown or edited one is not. Digests are remembered in `memo` (a file in the cache folder) by path,
    size, modification and change times and inode, so an unchanged file is read once, not at every start. The change
    time (ctime) is what catches an edit whose modification time was set back: no one can set it."""
    known = _read_memo(memo)
    stats = {p: os.stat(p) for p in paths}
    ids = {p: f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}" for p, st in stats.items()}
    todo = [p for p in paths if ids[p] not in known]
    if todo:
        size = sum(stats[p].st_size for p in todo)
        what = todo[0] if len(todo) == 1 else f"{len(todo):,} data files"
        print(f"hashing {what} ({human(size)}) to key the caches ...", end=" ", flush=True)
        start = time.perf_counter()
        for p in todo:
            known[ids[p]] = _digest(p)
        print(f"{time.perf_counter() - start:.1f} s", flush=True)
        _write_memo(memo, known, set(ids.values()))
    return [{"path": os.path.abspath(p), "size": stats[p].st_size, "mtime_ns": stats[p].st_mtime_ns, "sample": known[ids[p]]}
            for p in paths]


def _digest(path: str) -> str:
    return cache.file_digest(Path(path))


def human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000


MEMO_ENTRIES = 10_000  # digests kept in the memo: the files of the runs at hand, not every file ever hashed


def _read_memo(memo: Path | None) -> dict:
    try:
        known = json.loads(memo.read_text())
        return known if isinstance(known, dict) else {}
    except (AttributeError, OSError, ValueError):  # none, absent or damaged: it only saves time, so start afresh
        return {}


def _write_memo(memo: Path | None, known: dict, current: set) -> None:
    """Write the memo atomically (every rank of a launch may write it at once): the current files' digests, and the
    latest others' up to MEMO_ENTRIES; an earlier version of a current file is dropped."""
    if memo is None:
        return
    paths = {k.rsplit("|", 4)[0] for k in current}
    others = [k for k in known if k not in current and k.rsplit("|", 4)[0] not in paths]
    others = others[max(0, len(others) - (MEMO_ENTRIES - len(current))):]
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f".{memo.name}.{os.getpid()}")
        tmp.write_text(json.dumps({k: known[k] for k in [*others, *sorted(current)]}, indent=0))
        os.replace(tmp, memo)
    except OSError:  # a read-only cache folder costs a re-hash next time, nothing more
        pass
