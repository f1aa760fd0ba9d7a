"""Split the documents into train and test (a seeded hash of each text, or the --validation_file), yielding each with
its split, and count what would make held-out numbers mean less: duplicate texts, validation text seen in training."""
import hashlib
from array import array
from collections.abc import Iterable, Iterator

import numpy as np

from ..errors import UserError
from .files import train_files, validation_files
from .readers import ReadStats, read_texts

# The rule, named in the cache keys and the run's identity (prepare.source): caches and runs split by another rule
# (the document's position, before) are not reused as if their evaluation documents were the same.
RULE = "blake2b-of-text"


class Split:
    """Which documents are held out: those whose text has a seeded 64-bit hash below a threshold.

    The text alone decides, so a document stays on its side however the data around it grows, shrinks or is reordered
    (a resume on grown data never moves trained text into evaluation), and identical texts always share a side."""

    def __init__(self, seed: int, percentage: float):
        self.seed, self.threshold = seed, round(percentage / 100 * 2**64)

    def hash(self, data: bytes) -> int:
        """The seeded hash of a document's UTF-8 bytes."""
        return int.from_bytes(hashlib.blake2b(data, digest_size=8, key=str(self.seed).encode()).digest(), "little")

    def is_test(self, text: str) -> bool:
        return self.hash(text.encode()) < self.threshold

    @classmethod
    def of_documents(cls, seed: int, documents: int, texts: Iterable[str]) -> "Split":
        """Hold out the `documents` distinct texts with the smallest hashes: the same ones whatever the order of the data
        (copies of a chosen text are held out with it). One pass; 8 bytes a document."""
        split, hashes = cls(seed, 0), array("Q")
        for text in texts:
            hashes.append(split.hash(text.encode()))
        distinct = np.unique(np.frombuffer(hashes, dtype=np.uint64))
        if not 0 < documents < len(distinct):
            raise UserError(f"validation_split_documents={documents} must be between 1 and the number of distinct "
                            f"documents minus one ({len(distinct) - 1}).")
        split.threshold = int(distinct[documents - 1]) + 1
        return split


def _count(hashes: array) -> int:
    """How many of the hashes repeat one before them."""
    return len(hashes) - len(np.unique(np.frombuffer(hashes, dtype=np.uint64))) if hashes else 0


def documents(args, stats: ReadStats, split_name: str | None = None) -> Iterator[tuple[str, str]]:
    """Yield ("train" | "test", text) for every non-empty document, following the split or the validation files.

    With split_name set, yield only that split's documents. Once every document was read, stats holds each split's
    duplicate texts and, with validation files, how many of their documents are also training documents."""
    source = args.dataset_name or train_files(args)[0]
    read = lambda src, st: read_texts(src, args.text_column, args.skip_bad_records, st, args.dataset_config_name)  # noqa: E731
    if args.validation_split_documents is not None and not args.validation_file:
        split = Split.of_documents(args.split_seed, args.validation_split_documents, (t for t, *_ in read(source, ReadStats())))
    else:
        split = Split(args.split_seed, args.validation_split_percentage)
    hashes = {"train": array("Q"), "test": array("Q")}  # 8 bytes a document: 11 MB for the 1.4M of the whole dump

    def take(name: str | None, texts: Iterator[str]) -> Iterator[tuple[str, str]]:
        for text in texts:
            raw = text.encode()
            h = split.hash(raw)
            side = name or ("test" if h < split.threshold else "train")
            hashes[side].append(h)
            if split_name in (None, side):
                stats.bytes[side] += len(raw)
                yield side, text

    if args.validation_file:
        if split_name != "test":
            yield from take("train", (t for t, *_ in read(source, stats)))
        if split_name != "train":
            yield from take("test", (t for t, *_ in read(validation_files(args), ReadStats())))
        if split_name is None:
            train = np.frombuffer(hashes["train"], dtype=np.uint64)
            stats.in_train = int(np.isin(np.frombuffer(hashes["test"], dtype=np.uint64), train).sum())
    else:
        yield from take(None, (t for t, *_ in read(source, stats)))
    stats.duplicates = {s: _count(h) for s, h in hashes.items()}
    if split_name == "test" and args.validation_file:
        return  # the training files were not read
    if stats.records == 0:
        raise UserError(f"No usable record in {args.dataset_name or args.train_file}: all {stats.skipped} were bad and skipped. "
                        "Check --text_column and the files.")
    if stats.records == stats.empty:
        raise UserError(f"Every one of the {stats.records} records in {args.dataset_name or args.train_file} has an empty text; "
                        "there is nothing to train on. Check --text_column.")

