"""Find the data files, read their documents lazily, drop empty texts, and split them into train and test."""
import bz2
import codecs
import glob
import gzip
import hashlib
import importlib.util
import json
import lzma
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError

SUFFIXES = (".jsonl", ".json", ".parquet", ".txt")
COMPRESSED = (".gz", ".bz2", ".xz", ".zst")
# Files a downloaded dataset folder holds beside its data: never trained on, never reported as malformed.
METADATA = {"dataset_info.json", "dataset_infos.json", "dataset_dict.json", "state.json", "config.json", "configuration.json",
            "manifest.json"}
NOT_DATA_PREFIXES = ("readme", "license", "licence", "copying", "notice", "citation", "changelog")
TEXT_COLUMNS = ("text", "completion", "content")
CHUNK = 1 << 20  # bytes read at a time from a JSON array: bounded memory whatever the file size


@dataclass
class ReadStats:
    """What reading saw: records read, empty texts dropped, bad records skipped."""

    records: int = 0
    empty: int = 0
    skipped: int = 0
    bytes: dict = field(default_factory=lambda: {"train": 0, "test": 0})


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


# ---- readers: each yields (where, record, offset): `where` names the file and line for error messages, and `offset`
# is where the record starts (a byte offset; a row for parquet), so a stream can later resume there with a seek.

def _bad(where: str, what: str, skip: bool, stats: ReadStats) -> None:
    if not skip:
        raise UserError(f"{where}: {what}. Fix or remove that record, or pass --skip_bad_records to skip such records.")
    stats.skipped += 1


def _first_char(path: str) -> bytes:
    with _open(path) as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head[:1]


def _json_lines(path: str, skip: bool, stats: ReadStats, start: int = 0) -> Iterator[tuple[str, object, int]]:
    # Split on b"\n" only: the corpus holds raw U+2028 inside texts, which str.splitlines() would cut.
    offset = start
    with _open(path) as f:
        f.seek(start)
        for number, raw in enumerate(f, 1):
            begin, offset = offset, offset + len(raw)
            where = f"{path}: line {number}" if start == 0 else f"{path}: line at byte offset {begin}"
            if begin == 0:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                _bad(where, f"invalid UTF-8 at byte offset {begin + e.start}", skip, stats)
                continue
            try:
                yield where, json.loads(line), begin
            except json.JSONDecodeError as e:
                _bad(where, f"malformed JSON ({e.msg.removesuffix(' at')} at column {e.colno})", skip, stats)


def _json_array(path: str, skip: bool, stats: ReadStats, start: int = 0) -> Iterator[tuple[str, object, int]]:
    # datasets' json builder parses a whole array at once (2 GB of RAM for a 200 MB file); this reads it a
    # chunk at a time and decodes one element at a time with the standard library's raw_decode. A start > 0 is the
    # byte offset of an element, as yielded before.
    decoder, scanner = codecs.getincrementaldecoder("utf-8")(), json.JSONDecoder()
    buf, i, read, eof = "", 0, start, False
    cursor = [0, start, 1]  # a character index in buf, its byte offset in the file and its line, advanced as elements are read

    def advance(pos: int) -> int:
        cursor[1] += len(buf[cursor[0]:pos].encode("utf-8"))
        cursor[2] += buf.count("\n", cursor[0], pos)
        cursor[0] = pos
        return cursor[1]

    def more() -> None:
        nonlocal buf, i, read, eof
        chunk = f.read(CHUNK)
        pending = len(decoder.getstate()[0])
        try:
            text = decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: invalid UTF-8 at byte offset {read - pending + e.start}. Re-encode the file as UTF-8.") from None
        read += len(chunk)
        eof = not chunk
        advance(i)
        buf, i, cursor[0] = buf[i:] + text, 0, 0

    def where(pos: int) -> str:
        advance(pos)
        return f"{path}: element at byte offset {cursor[1]}" if start else f"{path}: line {cursor[2]}"

    def skip_space() -> str:
        nonlocal i
        while True:
            while i < len(buf) and buf[i] in " \t\r\n\ufeff":
                i += 1
            if i < len(buf) or eof:
                return buf[i] if i < len(buf) else ""
            more()

    with _open(path) as f:
        f.seek(start)
        if not start:
            if skip_space() != "[":
                raise UserError(f"{where(i)}: expected a JSON array ('[') or JSON Lines.")
            i += 1
        first = True
        while True:
            c = skip_space()
            if c == "]":
                i += 1
                if skip_space():
                    raise UserError(f"{where(i)}: unexpected text after the end of the JSON array.")
                return
            if not first:
                if c != ",":
                    raise UserError(f"{where(i)}: expected ',' or ']' between array elements; the file may be truncated or malformed.")
                i += 1
                skip_space()
            first = False
            while True:
                try:
                    obj, end = scanner.raw_decode(buf, i)
                    break
                except json.JSONDecodeError as e:
                    if eof:
                        raise UserError(f"{where(e.pos)}: the JSON array is truncated or malformed ({e.msg.removesuffix(' at')}). "
                                        "Re-download or repair the file.") from None
                    more()
            yield where(i), obj, cursor[1]
            i = end
            if not eof and len(buf) - i < CHUNK // 2:
                more()


def _parquet(path: str, skip: bool, stats: ReadStats, start: int = 0) -> Iterator[tuple[str, object, int]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise UserError(f"{path}: not a readable parquet file ({e}).") from None
    row = 0
    for batch in table.iter_batches(batch_size=1024):
        if row + batch.num_rows <= start:  # resuming: whole batches before the start are skipped undecoded
            row += batch.num_rows
            continue
        for record in batch.to_pylist():
            row += 1
            if row > start:
                yield f"{path}: row {row}", record, row - 1


def _txt(path: str, skip: bool, stats: ReadStats, start: int = 0) -> Iterator[tuple[str, object, int]]:
    # A .txt file holds documents separated by blank lines.
    lines, begin, offset = [], start, start
    with _open(path) as f:
        f.seek(start)
        for raw in f:
            size = len(raw)
            if offset == 0:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}: invalid UTF-8 at byte offset {offset + size - len(raw) + e.start}. "
                                "Re-encode the file as UTF-8.") from None
            offset += size
            if line.strip():
                lines.append(line)
            elif lines:
                yield f"{path}: document at byte offset {begin}", {"text": "\n".join(lines)}, begin
                lines = []
            if not lines:
                begin = offset
        if lines:
            yield f"{path}: document at byte offset {begin}", {"text": "\n".join(lines)}, begin


def _records(path: str, skip: bool, stats: ReadStats, start: int = 0) -> Iterator[tuple[str, object, int]]:
    if path.endswith(".parquet"):
        return _parquet(path, skip, stats, start)
    if _plain_name(path.lower()).endswith(".txt"):
        return _txt(path, skip, stats, start)
    first = _first_char(path)
    if not first:
        raise UserError(f"{path} is empty. Remove it from the data or point train_file elsewhere.")
    return _json_array(path, skip, stats, start) if first == b"[" else _json_lines(path, skip, stats, start)


def _hub_records(name: str, config: str | None, start: int = 0) -> Iterator[tuple[str, object, int]]:
    import datasets
    from huggingface_hub import constants

    from .net import reachable

    if not constants.HF_HUB_OFFLINE and not reachable(constants.ENDPOINT):
        raise UserError(f"Could not load dataset '{name}': the Hugging Face hub ({constants.ENDPOINT}) cannot be reached. "
                        "Without network, download the files (Hugging Face or ModelScope) and pass --train_file PATH.")
    try:
        stream = datasets.load_dataset(name, config, split="train", streaming=True)
        for row, record in enumerate(stream.skip(start) if start else stream, start):
            yield f"{name}: row {row + 1}", record, row
    except (ConnectionError, OSError, ValueError) as e:
        raise UserError(f"Could not load dataset '{name}' from the Hugging Face hub ({type(e).__name__}). "
                        "Without network, download the files (Hugging Face or ModelScope) and pass --train_file PATH.") from None


def read_texts(source: list[str] | str, text_column: str | None, skip: bool, stats: ReadStats,
               config: str | None = None, position: tuple[int, int] = (0, 0)) -> Iterator[tuple[str, int, int]]:
    """Yield (text, file index, offset) for every non-empty text of the files (or hub dataset id), in order,
    starting at position = (file index, offset of a record in it)."""
    names = source if isinstance(source, list) else [source]
    for index in range(position[0], len(names)):
        start = position[1] if index == position[0] else 0
        records = _records(names[index], skip, stats, start) if isinstance(source, list) else _hub_records(source, config, start)
        column, seen = text_column, 0
        for where, record, offset in records:
            if not isinstance(record, dict):
                _bad(where, f"expected a JSON object, found {type(record).__name__}", skip, stats)
                continue
            if column is None:
                column = next((c for c in TEXT_COLUMNS if c in record), None)
                if column is None:
                    raise UserError(f"{where}: no text column; found {sorted(record)}. Pass --text_column NAME.")
            if column not in record:
                _bad(where, f"no '{column}' field; found {sorted(record)}", skip, stats)
                continue
            text = record[column]
            if text is not None and not isinstance(text, str):
                _bad(where, f"'{column}' is a {type(text).__name__}, not a string", skip, stats)
                continue
            stats.records, seen = stats.records + 1, seen + 1
            if not text or not text.strip():
                stats.empty += 1
                continue
            yield text, index, offset
        if seen == 0 and start == 0 and isinstance(source, list) and len(source) == 1:
            raise UserError(f"{names[index]} holds no records. Check that it is the right file.")


class Split:
    """Which documents are held out: a seeded hash of each document's ordinal, so no pass over the data is needed."""

    def __init__(self, seed: int, percentage: float, documents: int | None = None, total: int | None = None):
        self.seed, self.fraction, self.chosen = seed, percentage / 100, None
        if documents is not None:
            if not 0 < documents < (total or 0):
                raise UserError(f"validation_split_documents={documents} must be between 1 and the number of documents "
                                f"minus one ({(total or 0) - 1}).")
            self.chosen = set(np.random.default_rng(seed).choice(total, documents, replace=False).tolist())

    def is_test(self, ordinal: int) -> bool:
        if self.chosen is not None:
            return ordinal in self.chosen
        digest = hashlib.blake2b(f"{self.seed}/{ordinal}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") < self.fraction * 2**64


def documents(args, stats: ReadStats, split_name: str | None = None) -> Iterator[tuple[str, str]]:
    """Yield ("train" | "test", text) for every non-empty document, following the split or the validation files.

    With split_name set, yield only that split's documents (the others are still read, to keep the ordinals)."""
    source = args.dataset_name or find_files(args.train_file)
    read = lambda src, st: read_texts(src, args.text_column, args.skip_bad_records, st, args.dataset_config_name)  # noqa: E731
    if args.validation_file:
        if split_name != "test":
            for text, *_ in read(source, stats):
                stats.bytes["train"] += len(text.encode())
                yield "train", text
        if split_name != "train":
            for text, *_ in read(find_files(args.validation_file, "validation_file"), ReadStats()):
                stats.bytes["test"] += len(text.encode())
                yield "test", text
        return
    total = None
    if args.validation_split_documents is not None:
        total = sum(1 for _ in read(source, ReadStats()))
    split = Split(args.split_seed, args.validation_split_percentage, args.validation_split_documents, total)
    for ordinal, (text, *_) in enumerate(read(source, stats)):
        name = "test" if split.is_test(ordinal) else "train"
        if split_name in (None, name):
            stats.bytes[name] += len(text.encode())
            yield name, text
    if stats.records == 0:
        raise UserError(f"No usable record in {args.dataset_name or args.train_file}: all {stats.skipped} were bad and skipped. "
                        "Check --text_column and the files.")
    if stats.records == stats.empty:
        raise UserError(f"Every one of the {stats.records} records in {args.dataset_name or args.train_file} has an empty text; "
                        "there is nothing to train on. Check --text_column.")
