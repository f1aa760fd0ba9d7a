"""Read the documents of data files lazily (JSON Lines, one JSON array, parquet, text; compressed or not): each yields
its texts in order, names the file and line of a bad record, and can start again at a record's offset."""
import codecs
import json
import lzma
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import UserError
from .files import _open, _plain_name

TEXT_COLUMNS = ("text", "completion", "content")
CHUNK = 1 << 20  # bytes read at a time from a JSON array: bounded memory whatever the file size


@dataclass
class ReadStats:
    """What reading saw: records read, empty texts dropped, bad records skipped; and, filled by split.documents once
    every document was read, each split's bytes and duplicate texts, and the validation documents also in training."""

    records: int = 0
    empty: int = 0
    skipped: int = 0
    bytes: dict = field(default_factory=lambda: {"train": 0, "test": 0})
    duplicates: dict = field(default_factory=lambda: {"train": 0, "test": 0})
    in_train: int | None = None


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

    from ..net import reachable

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


def _read_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged, truncated, vanished or forbidden file raises (gzip and bz2 raise EOFError and OSError)."""
    import pyarrow

    errors = (OSError, EOFError, lzma.LZMAError, zlib.error, pyarrow.ArrowException)
    try:
        import zstandard
    except ImportError:
        return errors
    return (*errors, zstandard.ZstdError)


def _unreadable(path: str, error: BaseException, last: str | None) -> UserError:
    """One paragraph for a file that cannot be read on: which file, how far it was read, why, and what to do."""
    at = f"after {last.removeprefix(path + ': ')}" if last else "at its start"
    if isinstance(error, FileNotFoundError):
        return UserError(f"{path} disappeared while it was being read ({at}): it was deleted or moved. Put it back, or "
                         "remove it from the data and run again.")
    if isinstance(error, PermissionError):
        return UserError(f"{path} cannot be read ({at}): permission denied. Make it readable (chmod +r), or remove it "
                         "from the data.")
    why = " ".join(str(error).split()) or type(error).__name__
    return UserError(f"{path} cannot be read {at}: {why}. The file is truncated or damaged (a download or copy cut "
                     "short?): download or copy it again (check it with `gzip -t`, `bzip2 -t` or `xz -t` when it is "
                     "compressed), or remove it from the data.")


def read_texts(source: list[str] | str, text_column: str | None, skip: bool, stats: ReadStats,
               config: str | None = None, position: tuple[int, int] = (0, 0)) -> Iterator[tuple[str, int, int]]:
    """Yield (text, file index, offset) for every non-empty text of the files (or hub dataset id), in order,
    starting at position = (file index, offset of a record in it)."""
    names = source if isinstance(source, list) else [source]
    for index in range(position[0], len(names)):
        start = position[1] if index == position[0] else 0
        if not isinstance(source, list):
            yield from _texts(_hub_records(source, config, start), index, text_column, skip, stats)
            continue
        last = [None]  # the last record read, for an error that stops the file after it
        try:
            seen = yield from _texts(_records(names[index], skip, stats, start), index, text_column, skip, stats, last)
        except _read_errors() as e:
            raise _unreadable(names[index], e, last[0]) from None
        if seen == 0 and start == 0 and len(source) == 1:
            raise UserError(f"{names[index]} holds no records. Check that it is the right file.")


def _texts(records, index: int, text_column: str | None, skip: bool, stats: ReadStats, last: list | None = None):
    """The texts of one file's records (see read_texts); returns how many records it read."""
    column, seen = text_column, 0
    for where, record, offset in records:
        if last is not None:
            last[0] = where
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
        try:  # json.loads accepts "\ud800" alone; UTF-8 and the tokenizer cannot (0.04 s for the sample's 19.5M chars)
            (text or "").encode("utf-8")
        except UnicodeEncodeError as e:
            _bad(where, f"'{column}' holds a lone surrogate (\\u{ord(text[e.start]):04x} at character {e.start}): "
                 "half of a UTF-16 pair, which is no character", skip, stats)
            continue
        stats.records, seen = stats.records + 1, seen + 1
        if not text or not text.strip():
            stats.empty += 1
            continue
        yield text, index, offset
    return seen
