"""Stream documents into token blocks on the fly, sharded across ranks by document, resumable from a saved position.

The dump is ordered by page id, so read in file order a stream trains topic by topic. Each rank therefore shuffles its
training documents within consecutive windows of shuffle_buffer_size documents: read a window, permute it with an RNG
seeded by (split_seed, epoch, rank, the window's first record ordinal), emit it in that order, read the next. A rolling
(reservoir) buffer mixes across window edges, but its content at a checkpoint depends on every draw since the start:
restoring it exactly means saving its texts (megabytes per rank) or replaying the stream from the start. A window
needs only its start position, its size and how many of its documents were emitted: the RNG state is its seed, derived
from what the position already holds, and a resume re-reads at most one window, O(window), whatever the stream's
length. shuffle_buffer_size 0 means windows of one tokenizer batch, unpermuted: file order."""
import atexit
import queue
import threading
from collections import OrderedDict

import numpy as np
import torch

from . import files, readers
from .blocks import encode
from .split import Split
from ..errors import UserError

BATCH_DOCS = 64  # documents per tokenizer call; a resume re-tokenizes at most one such batch
HISTORY = 4096  # positions remembered, keyed by blocks yielded: enough for any batch the Trainer has not yet consumed
# Blocks a background thread packs ahead of the training loop. Each holds block_size int64 tokens (input_ids and labels
# share one tensor): 256 blocks are 1 MiB at block_size 512, 4 MiB at 2048, plus one tokenizer batch in the making.
# The positions travel with the blocks and are recorded only once the training loop takes a block, so HISTORY need
# not cover the queue, only what the DataLoader reads ahead of the Trainer's count.
PREFETCH = 256
POLL_S = 0.1  # how often a producer waiting on a full queue (or a consumer on an empty one) checks whether to stop
_producers = {}  # running producer thread -> its stop event


@atexit.register
def _stop_producers() -> None:
    # A daemon thread that takes the GIL back after interpreter shutdown began is ended with pthread_exit; unwinding it
    # through the tokenizer's or torch's native frames aborts the process ("terminate called without an active
    # exception", exit status 134, after a run that went well). So stop them and wait, bounded, before that point.
    for stop in list(_producers.values()):
        stop.set()
    for thread in list(_producers):
        thread.join(timeout=10)


def _check(args) -> None:
    if args.validation_split_documents is not None:
        raise UserError("streaming: true takes validation_split_percentage (or a validation_file), not validation_split_documents.")
    if args.shuffle_buffer_size < 0:
        raise UserError(f"shuffle_buffer_size={args.shuffle_buffer_size}: give a number of documents (0 keeps file order).")


class StreamingBlocks(torch.utils.data.IterableDataset):
    """Training blocks read, tokenized and packed lazily from the files, forever (epoch after epoch).

    Rank r of w keeps the training documents whose ordinal is r mod w: the stream is sharded once, here; each rank
    parses every record but tokenizes only its share, shuffled within windows (see the module's docstring). After
    every block it remembers where to resume (the start of the current window, how many of its documents came before
    the current tokenizer batch, the tokens carried into that batch, and how many of its blocks were used), so a
    checkpoint restores the position with a file seek and one window's read instead of re-reading everything before it."""

    def __init__(self, args, tokenizer, rank: int = 0, world: int = 1):
        _check(args)
        self.args, self.tokenizer, self.rank, self.world = args, tokenizer, rank, world
        self.files = args.dataset_name or files.train_files(args)[0]
        self.split = Split(args.split_seed, args.validation_split_percentage)
        self.window = args.shuffle_buffer_size
        self.state = {"blocks": 0, "epoch": 0, "file": 0, "offset": 0, "ordinal": 0, "window": self.window, "emitted": 0,
                      "carry": [], "skip": 0}
        self.history = OrderedDict()
        self._stop = self._thread = None  # the running iteration's producer thread and the event that stops it

    def load_state_dict(self, state: dict) -> None:
        self.state = dict(state)

    def state_dict(self, blocks: int) -> dict:
        """The position after `blocks` blocks in all (the Trainer's count, not ours: the loader may read ahead)."""
        if blocks == self.state["blocks"]:
            return dict(self.state)
        if blocks not in self.history:
            raise RuntimeError(f"stream position after {blocks} blocks is no longer known")
        return self.history[blocks]

    def _windows(self, file: int, offset: int, ordinal: int, window: int):
        """Yield ((file, offset, ordinal) where a window starts, its size, this rank's training texts in it), the first
        of `window` texts (a resumed window keeps the size it was saved with), the next ones of self.window; 0: one
        tokenizer batch."""
        start, texts = None, []
        stream = readers.read_texts(self.files, self.args.text_column, self.args.skip_bad_records, readers.ReadStats(),
                                    self.args.dataset_config_name, position=(file, offset))
        for text, index, where in stream:
            start = start or (index, where, ordinal)
            if ordinal % self.world == self.rank and not (not self.args.validation_file and self.split.is_test(text)):
                texts.append(text)
            ordinal += 1
            if len(texts) == (window or BATCH_DOCS):
                yield start, window, texts
                start, texts, window = None, [], self.window
        if texts:
            yield start, window, texts

    def _batches(self, epoch: int, file: int, offset: int, ordinal: int, window: int, emitted: int):
        """Yield (the position where the batch starts, this rank's next tokenizer batch of texts), from the window that
        starts at (file, offset, ordinal), its first `emitted` documents already used."""
        for (file, offset, ordinal), window, texts in self._windows(file, offset, ordinal, window):
            if window:
                seed = np.random.SeedSequence([self.args.split_seed % 2**32, epoch, self.rank, ordinal])
                texts = [texts[i] for i in np.random.default_rng(seed).permutation(len(texts))]
            for e in range(emitted, len(texts), BATCH_DOCS):
                yield {"file": file, "offset": offset, "ordinal": ordinal, "window": window, "emitted": e}, texts[e:e + BATCH_DOCS]
            texts, emitted = None, 0  # dropped before the next window is read: at most one window is held

    def __iter__(self):
        """The blocks of _blocks(), made by a daemon thread up to PREFETCH blocks ahead: tokenizing overlaps the training
        step, since the Rust tokenizer releases the GIL. A thread, not DataLoader workers, because the position must
        live in this process. Each block comes with its position, recorded here on the consumer's side when the block is
        handed out, so the history is exact however far the thread runs ahead and only this thread touches it."""
        if self._stop is not None:
            self._stop.set()  # one producer per dataset: a new iteration (e.g. after load_state_dict) ends the last one
        stop, blocks = threading.Event(), queue.Queue(maxsize=PREFETCH)
        self._stop = stop
        self._thread = threading.Thread(target=self._produce, args=(self._blocks(self.state), blocks, stop),
                                        name="zhpretrain-stream", daemon=True)  # never keeps the process alive at exit
        _producers[self._thread] = stop
        self._thread.start()
        try:
            while True:
                if stop.is_set():  # two iterations would write one history: the newer one wins
                    raise RuntimeError("this iteration of the stream was replaced by a newer iter() of the same dataset")
                try:
                    position, block = blocks.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                if position is None:  # (None, error): the producer's error, unchanged, after the blocks before it
                    raise block
                self.history[position["blocks"]] = position
                if len(self.history) > HISTORY:
                    self.history.popitem(last=False)
                yield block
        finally:
            stop.set()  # closed, collected or failed: the producer quits at its next put

    @staticmethod
    def _produce(source, blocks: queue.Queue, stop: threading.Event) -> None:
        """Move (position, block) pairs from source into the queue until told to stop; an error goes in as (None, it)."""
        def put(item) -> bool:
            while not stop.is_set():
                try:
                    blocks.put(item, timeout=POLL_S)
                    return True
                except queue.Full:
                    pass
            return False

        try:
            for item in source:
                if not put(item):
                    return
        except BaseException as error:  # noqa: BLE001 -- every error is the consumer's to raise
            put((None, error))
        finally:
            source.close()  # the files it reads
            _producers.pop(threading.current_thread(), None)

    def _blocks(self, s: dict):
        """Yield (the position after the block, the block) from position s on, forever, synchronously."""
        size = self.args.block_size
        blocks, epoch, carry, skip = s["blocks"], s["epoch"], np.array(s["carry"], dtype=np.int64), s["skip"]
        # A position saved before windows existed is the start of an unpermuted tokenizer batch: window 0.
        position = (s["file"], s["offset"], s["ordinal"], s.get("window", 0), s.get("emitted", 0))
        while True:
            produced, whole_epoch = False, position[:3] == (0, 0, 0) and position[4] == 0
            for start, texts in self._batches(epoch, *position):
                tokens = np.concatenate([carry, encode(self.tokenizer, texts)])
                del texts  # this batch's texts are not held while the next window is read
                produced |= len(tokens) >= size  # this epoch has text for a block, even if a resume skips all of them
                resume = {"epoch": epoch, **start, "carry": carry.tolist()}
                for b in range(skip, len(tokens) // size):
                    blocks += 1
                    ids = torch.from_numpy(tokens[b * size:(b + 1) * size].copy())
                    yield {**resume, "blocks": blocks, "skip": b + 1}, {"input_ids": ids, "labels": ids}
                carry, skip = tokens[len(tokens) // size * size:], 0
            if whole_epoch and not produced:
                raise UserError(f"Rank {self.rank} of {self.world} found no training text for a single block of {size} tokens "
                                "in the stream. Give more data or lower --block_size.")
            epoch, position = epoch + 1, (0, 0, 0, self.window, 0)  # the next epoch reads the files again from the start


def eval_blocks(args, tokenizer, max_blocks: int):
    """The fixed evaluation set: the held-out documents from the start of the stream (or the validation files),
    packed into at most max_blocks blocks and kept in memory. Returns (blocks, stats)."""
    _check(args)
    if args.validation_file:
        source, split = files.validation_files(args), None
    else:
        source, split = args.dataset_name or files.train_files(args)[0], Split(args.split_seed, args.validation_split_percentage)
    texts, tokens, pieces, stats = [], 0, [], {"documents": 0, "tokens": 0, "bytes": 0}

    def flush():
        nonlocal texts, tokens
        pieces.append(encode(tokenizer, texts))
        tokens += len(pieces[-1])
        stats["documents"] += len(texts)
        stats["bytes"] += sum(len(t.encode()) for t in texts)
        texts = []

    for text, *_ in readers.read_texts(source, args.text_column, args.skip_bad_records, readers.ReadStats(), args.dataset_config_name):
        if split is None or split.is_test(text):
            texts.append(text)
            if len(texts) == BATCH_DOCS:
                flush()
                if tokens >= max_blocks * args.block_size:
                    break
    if texts:
        flush()
    flat = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    n = min(len(flat) // args.block_size, max_blocks)
    stats.update(tokens=len(flat), blocks=n, tokens_in_blocks=n * args.block_size)
    rows = torch.from_numpy(flat[:n * args.block_size].reshape(n, args.block_size).copy())
    return [{"input_ids": r, "labels": r} for r in rows], stats
