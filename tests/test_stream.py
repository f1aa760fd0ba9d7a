"""Streaming: blocks packed on the fly, sharded once across ranks, a fixed held-out set, and exact O(1) resume."""
import itertools
import json
import math
import time

import pytest

from conftest import DEMO
from zhpretrain.data import stream, tokenizer
from zhpretrain.config import DataArguments
from zhpretrain.errors import UserError


@pytest.fixture(scope="module")
def tok():
    texts = [line for line in DEMO.read_text(encoding="utf-8").splitlines()]
    return tokenizer.train(iter(texts), vocab_size=600, max_chars=10**6)


def args(**kw):
    return DataArguments(**{"train_file": str(DEMO), "block_size": 32, "validation_split_percentage": 10, "streaming": True, **kw})


def take(dataset, n):
    return [b["input_ids"].tolist() for b in itertools.islice(iter(dataset), n)]


def plain(dataset, n):
    """The first n (position, block) of the stream without the background thread: the generator run synchronously."""
    return [(p, b["input_ids"].tolist()) for p, b in itertools.islice(dataset._blocks(dataset.state), n)]


def test_ranks_read_disjoint_documents_and_never_the_held_out_ones(tok, monkeypatch):
    seen = {}
    real = stream.encode

    def spy(tokenizer, texts):
        seen.setdefault(current, []).extend(texts)
        return real(tokenizer, texts)
    monkeypatch.setattr(stream, "encode", spy)
    for current in (0, 1):
        ds = stream.StreamingBlocks(args(), tok, rank=current, world=2)
        take(ds, 500)  # more than one epoch of the demo corpus: cycles
        ds._thread.join(timeout=10)  # the producer reads ahead: let it stop before `current` changes
    current = "eval"
    stream.eval_blocks(args(), tok, 10**6)
    ranks = [set(seen[0]), set(seen[1])]
    assert ranks[0] and ranks[1] and not ranks[0] & ranks[1]
    assert not (ranks[0] | ranks[1]) & set(seen["eval"])
    assert len(ranks[0] | ranks[1] | set(seen["eval"])) == sum(1 for _ in open(DEMO, encoding="utf-8"))


@pytest.mark.parametrize("at", [1, 37, 250, 700])  # inside the first batch, later, and in later epochs
def test_resume_from_a_saved_position_continues_exactly(tok, at):
    straight = take(stream.StreamingBlocks(args(), tok), at + 40)
    first = stream.StreamingBlocks(args(), tok)
    blocks = iter(first)
    # The loader reads ahead of what the Trainer used, and the producer thread further still (up to PREFETCH more),
    # still running while the position is asked for.
    before = [next(blocks)["input_ids"].tolist() for _ in range(at + 300)]
    state = first.state_dict(at)
    assert first._thread.is_alive()
    blocks.close()
    resumed = stream.StreamingBlocks(args(), tok)
    resumed.load_state_dict(state)
    assert before[:at] + take(resumed, 40) == straight


def test_eval_blocks_are_fixed_and_capped(tok):
    a, stats = stream.eval_blocks(args(), tok, 5)
    b, _ = stream.eval_blocks(args(), tok, 5)
    assert len(a) == 5 and [x["input_ids"].tolist() for x in a] == [x["input_ids"].tolist() for x in b]
    assert stats["documents"] > 0 and stats["bytes"] > 0


def test_streaming_refuses_a_document_count_split(tok):
    with pytest.raises(UserError, match="validation_split_percentage"):
        stream.StreamingBlocks(args(validation_split_documents=3), tok)


def test_resume_after_the_last_block_of_a_one_batch_epoch(tok, tmp_path):
    # The whole epoch fits one tokenizer batch: the saved position is the file start with every block used.
    from conftest import write_jsonl

    small = write_jsonl(tmp_path / "small.jsonl", [{"text": "陕西省是中国的一个省。" * 8} for _ in range(20)])
    a = args(train_file=str(small), validation_split_percentage=5)
    first = stream.StreamingBlocks(a, tok)
    per_epoch = 0
    for _ in iter(first):
        per_epoch += 1
        if first.history[per_epoch]["epoch"] > 0:
            per_epoch -= 1
            break
    resumed = stream.StreamingBlocks(a, tok)
    resumed.load_state_dict(first.state_dict(per_epoch))
    assert take(resumed, 3) == take(stream.StreamingBlocks(a, tok), per_epoch + 3)[per_epoch:]


@pytest.mark.parametrize("rank", [0, 1])
def test_the_prefetched_stream_is_the_plain_generator_block_for_block(tok, rank):
    a = args(block_size=128)
    ds = stream.StreamingBlocks(a, tok, rank=rank, world=2)
    expected = plain(stream.StreamingBlocks(a, tok, rank=rank, world=2), 800)
    assert expected[-1][0]["epoch"] >= 1  # past the end of the corpus and round again
    assert take(ds, 800) == [b for _, b in expected]
    assert [ds.history[n] for n in range(1, 801)] == [p for p, _ in expected]  # every position, recorded by the consumer


def test_an_error_in_the_producer_reaches_the_consumer_unchanged_where_it_happened(tok, tmp_path):
    from conftest import write_jsonl

    # No block's worth of text on this rank: the error is raised before any block.
    few = args(train_file=str(write_jsonl(tmp_path / "few.jsonl", [{"text": "短文。"} for _ in range(5)])), block_size=512)
    with pytest.raises(UserError) as synchronous:
        plain(stream.StreamingBlocks(few, tok), 1)
    with pytest.raises(UserError) as threaded:
        take(stream.StreamingBlocks(few, tok), 1)
    assert "found no training text" in str(threaded.value) and str(threaded.value) == str(synchronous.value)

    # A bad record after some good ones: every block before it arrives first, then readers.read_texts's error. (A
    # shuffle window is read whole before its first block: windows of one tokenizer batch, as in file order.)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "陕西省是中国的一个省。" * 8} for _ in range(150)])
    bad.write_text(bad.read_text(encoding="utf-8") + "[1]\n", encoding="utf-8")
    received, ds = [], stream.StreamingBlocks(args(train_file=str(bad), shuffle_buffer_size=0), tok)
    with pytest.raises(UserError, match=r"bad.jsonl: line 151: expected a JSON object") as threaded:
        for block in ds:
            received.append(block["input_ids"].tolist())
    expected, same = [], stream.StreamingBlocks(args(train_file=str(bad), shuffle_buffer_size=0), tok)
    with pytest.raises(UserError) as synchronous:
        for _, block in same._blocks(same.state):
            expected.append(block["input_ids"].tolist())
    assert type(threaded.value) is type(synchronous.value) and str(threaded.value) == str(synchronous.value)
    assert received and received == expected  # two tokenizer batches' blocks, then the error
    ds._thread.join(timeout=5)
    assert not ds._thread.is_alive()

def test_the_producer_thread_stops_when_the_iteration_ends(tok):
    ds = stream.StreamingBlocks(args(), tok)
    blocks = iter(ds)
    next(blocks)
    thread = ds._thread
    assert thread.is_alive() and thread.daemon  # a daemon: it never keeps the process alive at exit
    blocks.close()
    thread.join(timeout=5)
    assert not thread.is_alive()

    blocks = iter(ds)  # dropped without close(): garbage-collected
    next(blocks)
    thread = ds._thread
    del blocks
    thread.join(timeout=5)
    assert not thread.is_alive()

    old = iter(ds)  # a new iteration (say after load_state_dict) stops the old one's producer
    next(old)
    thread = ds._thread
    new = iter(ds)
    next(new)
    thread.join(timeout=5)
    assert not thread.is_alive() and ds._thread.is_alive()
    with pytest.raises(RuntimeError, match="replaced by a newer iter"):
        next(old)
    new.close()
    ds._thread.join(timeout=5)
    assert not ds._thread.is_alive()


def test_tokenizing_overlaps_the_consumer(tok, monkeypatch):
    # Both sides sleep COST per step; time.sleep releases the GIL as the Rust tokenizer does. Run one after the other
    # they would take COST x (tokenizer calls + consumer steps); overlapped, about half of that.
    COST, N = 0.05, 900
    monkeypatch.setattr(stream, "BATCH_DOCS", 8)  # more, smaller tokenizer calls
    a, calls, real = args(block_size=128), [], stream.encode

    def counted(tokenizer, texts):
        calls.append(len(texts))
        return real(tokenizer, texts)
    monkeypatch.setattr(stream, "encode", counted)
    plain(stream.StreamingBlocks(a, tok), N)
    serial_calls = len(calls)  # the tokenizer calls the synchronous stream makes for N blocks
    per = math.ceil(N / serial_calls)  # blocks per consumer step: as many steps as tokenizer calls
    serial = COST * (serial_calls + N // per)
    assert serial_calls >= 10

    def slow(tokenizer, texts):
        time.sleep(COST)
        return real(tokenizer, texts)
    monkeypatch.setattr(stream, "encode", slow)
    start = time.perf_counter()
    for n, _ in enumerate(itertools.islice(iter(stream.StreamingBlocks(a, tok)), N), 1):
        if n % per == 0:
            time.sleep(COST)  # the training step
    elapsed = time.perf_counter() - start
    assert elapsed < 0.75 * serial, f"{elapsed:.2f} s for a serial {serial:.2f} s"


def test_the_history_needs_to_cover_only_what_the_consumer_took(tok, monkeypatch):
    # Positions are recorded when a block leaves the queue, not when the producer makes it: a short history still
    # knows the Trainer's position while the producer runs up to PREFETCH blocks ahead.
    monkeypatch.setattr(stream, "HISTORY", 8)
    ds = stream.StreamingBlocks(args(), tok)
    blocks = iter(ds)
    taken = [next(blocks)["input_ids"].tolist() for _ in range(20)]
    state = ds.state_dict(15)
    blocks.close()
    resumed = stream.StreamingBlocks(args(), tok)
    resumed.load_state_dict(state)
    assert taken[15:] == take(resumed, 5)


EXIT_SCRIPT = """
import pathlib, sys, threading, time
from zhpretrain.data import stream, tokenizer
from zhpretrain.config import DataArguments

tok, calls, second = tokenizer.load(sys.argv[1]), pathlib.Path(sys.argv[2]), threading.Event()
real = stream.encode

def slow(tokenizer, texts):
    n = int(calls.read_text() or 0) + 1 if calls.exists() else 1
    second.set() if n == 2 else None
    time.sleep(0.5)  # in the tokenizer (native code) when the interpreter starts to shut down
    out = real(tokenizer, texts)
    calls.write_text(str(n))
    return out

stream.encode = slow
args = DataArguments(train_file=sys.argv[3], block_size=2048, validation_split_percentage=10, streaming=True)
blocks = iter(stream.StreamingBlocks(args, tok))
next(blocks)
second.wait(10)  # the producer is inside its second tokenizer call (it reads ahead): close and exit while it is there
blocks.close()
"""


def test_the_interpreter_waits_for_a_producer_busy_at_exit(tok, tmp_path):
    # A daemon thread still in native code at shutdown is killed with pthread_exit when it takes the GIL back, which
    # aborts the process inside the tokenizer or torch (exit status 134): the atexit hook stops the producer and waits.
    import subprocess
    import sys

    from conftest import REPO

    tok.save_pretrained(tmp_path / "tok")
    calls = tmp_path / "calls"
    done = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, str(tmp_path / "tok"), str(calls), str(DEMO)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert calls.read_text() == "2"  # the call in progress at exit finished


# The shuffle buffer: windows of shuffle_buffer_size documents, permuted, resumed from (window start, emitted).
W = 40  # documents per window: the demo's 114 training documents (at 10% held out) make two whole windows and a short one


def training_texts(a):
    """This rank's (rank 0 of 1) training documents in file order, read here with json and the split's own hash."""
    split = stream.Split(a.split_seed, a.validation_split_percentage)
    texts = [json.loads(line)["text"] for line in DEMO.read_text(encoding="utf-8").splitlines()]
    return [t for t in texts if t.strip() and not split.is_test(t)]


def spied(monkeypatch):
    """The texts of every tokenizer call, in order."""
    calls, real = [], stream.encode

    def spy(tokenizer, texts):
        calls.append(list(texts))
        return real(tokenizer, texts)
    monkeypatch.setattr(stream, "encode", spy)
    return calls


def test_shuffle_buffer_size_0_keeps_file_order(tok, monkeypatch):
    a = args(block_size=256, shuffle_buffer_size=0)
    calls, train = spied(monkeypatch), training_texts(a)
    blocks = [b for _, b in plain(stream.StreamingBlocks(a, tok), 800)]
    assert [t for c in calls for t in c][:2 * len(train)] == train + train  # two epochs, each in file order
    assert [len(c) for c in calls[:2]] == [64, len(train) - 64]  # one tokenizer batch after another, as before windows
    flat = stream.encode(tok, train).tolist()
    assert blocks[:len(flat) // 256] == [flat[i * 256:(i + 1) * 256] for i in range(len(flat) // 256)]


def test_the_buffer_shuffles_within_windows_by_default(tok, monkeypatch):
    assert DataArguments().shuffle_buffer_size >= 1000  # on by default
    monkeypatch.setattr(stream, "BATCH_DOCS", 8)
    a = args(block_size=256, shuffle_buffer_size=W)
    calls, train = spied(monkeypatch), training_texts(a)
    plain(stream.StreamingBlocks(a, tok), 800)
    order = [t for c in calls for t in c]
    assert len(order) >= 2 * len(train)
    epochs = [order[:len(train)], order[len(train):2 * len(train)]]
    for e in epochs:
        assert e != train
        for w in range(0, len(train), W):  # each window's documents, all of them, inside that window's span
            assert sorted(e[w:w + W]) == sorted(train[w:w + W]) and (len(e[w:w + W]) < 2 or e[w:w + W] != train[w:w + W])
        moved = sum(abs(train.index(t) - i) for i, t in enumerate(e[:W])) / W
        assert moved > W / 6  # a uniform permutation moves a document W/3 on average; file order moves none
    assert epochs[0] != epochs[1]  # a new permutation each epoch

    # The default window holds the whole demo corpus: one epoch is one permutation of all of it.
    calls.clear()
    plain(stream.StreamingBlocks(args(block_size=256), tok), 400)
    first = [t for c in calls for t in c][:len(train)]
    assert sorted(first) == sorted(train) and first != train


@pytest.fixture()
def windowed(tok, monkeypatch):
    """The uninterrupted stream of windows of W, tokenizer batches of 8 (five a window): (args, positions, blocks)."""
    monkeypatch.setattr(stream, "BATCH_DOCS", 8)
    a = args(block_size=256, shuffle_buffer_size=W)
    positions, blocks = zip(*plain(stream.StreamingBlocks(a, tok), 900))
    return a, positions, blocks


@pytest.mark.parametrize("where", ["first block", "mid-window", "mid-batch", "window start", "next epoch mid-window"])
def test_the_buffer_resumes_exactly_where_the_uninterrupted_stream_goes_on(tok, windowed, where):
    a, positions, blocks = windowed
    pick = {"first block": lambda p: p["blocks"] == 1,
            "mid-window": lambda p: p["emitted"] >= 16 and p["epoch"] == 0,
            "mid-batch": lambda p: p["emitted"] > 0 and p["skip"] > 1 and len(p["carry"]) > 0 and p["ordinal"] > 0,
            "window start": lambda p: p["ordinal"] > 0 and p["emitted"] == 0 and p["skip"] == 1,
            "next epoch mid-window": lambda p: p["epoch"] == 1 and p["emitted"] > 0 and p["ordinal"] > 0}[where]
    n = next(p["blocks"] for p in positions if pick(p))
    assert n < 800
    state = json.loads(json.dumps(positions[n - 1]))  # as the checkpoint holds it: stream_rank0.json
    assert state["window"] == W and len(json.dumps(state)) < 6 * 256 + 200  # no texts: ints and the carried tokens
    resumed = stream.StreamingBlocks(a, tok)
    resumed.load_state_dict(state)
    assert take(resumed, 60) == list(blocks[n:n + 60])


def test_a_resume_with_another_buffer_size_finishes_the_saved_window_then_uses_the_new_size(tok, windowed, monkeypatch):
    a, positions, _ = windowed
    calls, train = spied(monkeypatch), training_texts(a)
    straight = stream.StreamingBlocks(a, tok)
    at = {}  # block -> tokenizer calls made when it was yielded
    for p, _ in itertools.islice(straight._blocks(straight.state), 400):
        at[p["blocks"]] = len(calls)
    n = next(p["blocks"] for p in positions if p["epoch"] == 0 and p["emitted"] >= 16)
    before = [t for c in calls[:at[n] - 1] for t in c]  # the documents of the batches before the saved one
    saved_window = [t for c in calls[at[n] - 1:] for t in c][:W - positions[n - 1]["emitted"]]
    calls.clear()
    resumed = stream.StreamingBlocks(args(block_size=256, shuffle_buffer_size=25), tok)
    resumed.load_state_dict(positions[n - 1])
    plain(resumed, 400)
    after = [t for c in calls for t in c][:len(train) - len(before)]
    assert after[:len(saved_window)] == saved_window  # the saved window, rebuilt as it was
    assert sorted(before + after) == sorted(train)  # the epoch's every document once: none lost, none twice
    rest = after[len(saved_window):]
    assert sorted(rest[:25]) == sorted(train[W:W + 25]) and rest[:25] != train[W:W + 25]  # then windows of 25


def test_the_buffer_holds_at_most_one_window_of_documents(tok, monkeypatch):
    # Every text the reader yields is counted while alive (CPython frees it when its last reference goes): at no time
    # does the stream hold more than one window (+1: the text the reader is yielding now), whatever it reads ahead.
    live, peak = [0], [0]

    class Counted(str):
        def __del__(self):
            live[0] -= 1

    real = stream.readers.read_texts

    def counted(*a, **kw):
        for text, *rest in real(*a, **kw):
            live[0] += 1
            peak[0] = max(peak[0], live[0])
            yield (Counted(text), *rest)
    monkeypatch.setattr(stream.readers, "read_texts", counted)
    monkeypatch.setattr(stream, "BATCH_DOCS", 8)
    plain(stream.StreamingBlocks(args(block_size=256, shuffle_buffer_size=W), tok), 800)  # several epochs of windows
    assert W <= peak[0] <= W + 1
    with pytest.raises(UserError, match="shuffle_buffer_size=-1"):
        stream.StreamingBlocks(args(block_size=256, shuffle_buffer_size=-1), tok)
