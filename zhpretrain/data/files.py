"""Find the data files (a path, a folder or a glob), open them (decompressing), and fingerprint their content."""
import bz2
import glob
import gzip
import hashlib
import importlib.util
import lzma
import os
import re
from pathlib import Path

from ..errors import UserError

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


def data_files(spec: str, what: str = "train_file") -> tuple[list[str], list[str]]:
    """Expand a path, directory or glob into (data files, files skipped as not data), or say clearly why there are none."""
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
    paths = [p for p in found if _is_data(Path(p), top)]
    if not paths:
        kind = "is a directory with no data files in it" if os.path.isdir(spec) else "matches no data files"
        raise UserError(f"{what} '{spec}' {kind} ({', '.join(SUFFIXES)}, optionally compressed); skipped: "
                        f"{', '.join(found[:5]) or 'nothing'}.")
    for p in paths:
        _check_readable(p)
    return paths, [p for p in found if p not in set(paths)]


def find_files(spec: str, what: str = "train_file") -> list[str]:
    return data_files(spec, what)[0]


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


def fingerprint(paths: list[str]) -> list[dict]:
    """Each file's path, size, modification time and a digest of samples of its content.

    The cache keys use all of it; a run's identity compares size and content only, so a copied or touched file is the
    same data and a grown or edited one is not."""
    return [{"path": os.path.abspath(p), "size": os.path.getsize(p), "mtime_ns": os.stat(p).st_mtime_ns,
             "sample": _sample_digest(p)} for p in paths]


def _sample_digest(path: str, windows: int = 16, width: int = 1 << 16) -> str:
    """blake2b of 16 windows of 64 KB spread evenly over the file: 1 MB read whatever its size."""
    size, h = os.path.getsize(path), hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for i in range(windows):
            f.seek(max(0, (size - width) * i // max(windows - 1, 1)))
            h.update(f.read(width))
    return h.hexdigest()

