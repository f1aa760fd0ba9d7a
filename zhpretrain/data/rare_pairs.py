"""Cut Han runs between characters that too rarely stand side by side for any BPE merge to join them.

Why: Qwen2's split makes a whole CJK clause one word for the BPE trainer, nearly every clause is distinct, and the
trainer's tables cost ~230 bytes per character of distinct words, so its memory grew linearly with its text (0.21 GB
per million characters; 100 M characters would need ~21 GB). Cut at rare pairs, a clause becomes a few short,
often-repeated words, and the distinct words grow far more slowly than the text (docs/tokenizer.md).

Why this loses (almost) nothing: a merge joins two adjacent symbols, and a symbol that spans the boundary between
characters a and b can only be made at places where a and b stand side by side. If the pair ab occurs fewer times
than the count of the last merge the trainer makes, no merge across it is ever chosen, and cutting there changes no
pair count the trainer acts on. The one exception is byte-level: a merge of a's last byte with b's first counts every
character pair sharing those bytes, and loses the cut places; such merges are rare in Chinese, and the measured
merges and characters per token match whole-run training (tests/test_rare_pairs.py, docs/tokenizer.md).

The pair counts come from a count-min sketch (Cormode & Muthukrishnan 2005): a fixed table of 4 x 2^22 counters at
most (64 MB), whose estimate is never below the true count, so a hash collision can only keep a pair whole, never
cut a frequent one. A cut is a newline: Qwen2's split makes it a word of its own, of one byte, which has no pairs."""
import numpy as np

ROWS, MAX_BITS = 4, 22
# Han ideographs: the CJK Unified Ideographs with their extensions A to H. (The compatibility ideographs are left
# whole: NFC maps them onto unified ones, so their pairs would be counted apart from the pairs the trainer sees.)
HAN = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0x20000, 0x323AF))
# Odd 64-bit multipliers for multiply-shift hashing, one per row (digits of pi and e; any odd constants would do).
MULTIPLIERS = np.array([0x243F6A8885A308D3, 0x13198A2E03707345, 0xA4093822299F31D1, 0xB7E151628AED2A6B], np.uint64)
BATCH = 1 << 18  # pairs hashed at once (the hashing holds ~64 bytes per pair)


def _han_pairs(text: str) -> tuple[np.ndarray, np.ndarray]:
    """The key (both code points) of every adjacent pair of Han characters in text, and the index of its first one."""
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
    han = np.zeros(len(codes), bool)
    for low, high in HAN:
        han |= (codes >= low) & (codes <= high)
    first = np.flatnonzero(han[:-1] & han[1:])
    return (codes[first].astype(np.uint64) << np.uint64(21)) | codes[first + 1], first


class PairCounts:
    """Counts of adjacent Han character pairs in the texts given to add, estimated from above in fixed memory."""

    def __init__(self, chars: int):
        self.bits = min(MAX_BITS, max(16, int(chars).bit_length()))  # about one counter per character, to 2^22
        self.table = np.zeros((ROWS, 1 << self.bits), np.int32)
        self.pending: list[np.ndarray] = []

    def _slots(self, keys: np.ndarray) -> np.ndarray:
        return ((keys[None, :] * MULTIPLIERS[:, None]) >> np.uint64(64 - self.bits)).astype(np.int64)

    def add(self, text: str) -> None:
        self.pending.append(_han_pairs(text)[0])
        if sum(map(len, self.pending)) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            for row, slots in zip(self.table, self._slots(np.concatenate(self.pending))):
                np.add.at(row, slots, 1)
            self.pending = []

    def estimate(self, keys: np.ndarray) -> np.ndarray:
        """For each pair key, a count at least its true count (the least of its counters)."""
        self.flush()
        return np.min([row[slots] for row, slots in zip(self.table, self._slots(keys))], axis=0)

    def cut(self, text: str, threshold: int) -> str:
        """text with a newline between every two Han characters that stand side by side fewer than threshold times."""
        keys, first = _han_pairs(text)
        if not len(keys):
            return text
        at = first[self.estimate(keys) < threshold] + 1
        if not len(at):
            return text
        bounds = [0, *at.tolist(), len(text)]
        return "\n".join(text[i:j] for i, j in zip(bounds, bounds[1:]))


# The count of the trainer's last merges, measured on the sample corpus (spread, whole runs; the tokens of the last 200
# merges counted in their own training text, 2026-12-02): 3 at 1 M characters and 32k tokens, 8 at 3 M and 32k, 121
# at 3 M and 4k, i.e. 0.085-0.165 x characters / vocabulary. Cutting below 0.08 x characters / vocabulary stays at or
# under it; at 10 M characters and 32k (where it gives 24), cutting below 9 / 36 / 90 / 270 measured 1.6629 / 1.6620 /
# 1.6094 / 1.4687 held-out characters per token against 1.6629 uncut (docs/tokenizer.md): past the last merges' count
# the cut starts to take merges away.
LAST_MERGE_SHARE = 0.08


def threshold(chars: int, vocab_size: int) -> int:
    """Cut between Han pairs seen fewer times than this in chars characters of training text: about the count of the
    last merges a vocab_size BPE makes, and at least 2 (a pair seen once can never merge: the trainer's
    min_frequency is 2)."""
    return max(2, int(LAST_MERGE_SHARE * chars / vocab_size))
