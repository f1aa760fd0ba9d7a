"""Streaming: blocks packed on the fly, sharded once across ranks, a fixed held-out set, and exact O(1) resume."""
import itertools

import pytest

from conftest import DEMO
from zhpretrain import stream, tokenizer
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
    before = take(first, at + 5)  # the loader may read ahead of what the Trainer used
    resumed = stream.StreamingBlocks(args(), tok)
    resumed.load_state_dict(first.state_dict(at))
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
