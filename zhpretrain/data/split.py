"""Split the documents into train and test (a seeded hash, or the --validation_file), yielding each with its split."""
import hashlib
from collections.abc import Iterator

import numpy as np

from ..errors import UserError
from .files import find_files
from .readers import ReadStats, read_texts


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
