"""The corpora the preprocessing measurements run on (tests/benchmarks/prepare_constants.py grow): copies of real text
that the pipeline reads as new documents, not as repeats it could count and skip."""
import json
import sys

from conftest import DEMO, REPO

sys.path.insert(0, str(REPO / "tests" / "benchmarks"))

import prepare_constants  # noqa: E402
from zhpretrain.config import DataArguments  # noqa: E402
from zhpretrain.data import split  # noqa: E402
from zhpretrain.data.readers import ReadStats  # noqa: E402


def test_a_grown_corpus_holds_whole_perturbed_copies_and_no_repeated_text(tmp_path):
    grown = tmp_path / "grown.jsonl"
    prepare_constants.grow(str(DEMO), 2.5, str(grown))
    original = [json.loads(line) for line in DEMO.read_text(encoding="utf-8").splitlines()]
    records = [json.loads(line) for line in grown.read_text(encoding="utf-8").splitlines()]
    size, got = DEMO.stat().st_size, grown.stat().st_size
    assert 2.5 * size <= got < 2.5 * size + max(len(json.dumps(r, ensure_ascii=False).encode()) for r in original) * 1.1
    assert 2 * len(original) < len(records) < 3 * len(original)
    assert records[:len(original)] == original  # copy 0 is the file itself
    for copy in (1, 2):
        for a, b in zip(original, records[copy * len(original):(copy + 1) * len(original)]):
            # the same paragraphs (the same words, nearly the same length), in another order, with the copy's mark
            assert b["text"] != a["text"] and b["text"].startswith(f"（{copy}）")
            assert sorted(b["text"][len(f"（{copy}）"):].split("\n")) == sorted(a["text"].split("\n"))
    stats = ReadStats()
    docs = list(split.documents(DataArguments(train_file=str(grown), validation_split_percentage=10), stats))
    assert len(docs) == len(records) and stats.duplicates == {"train": 0, "test": 0}


# ---- issue 18 item 8: a sample longer than the model's positions is refused before anything runs

def test_max_new_tokens_beyond_the_models_positions_is_one_paragraph_at_parse_time(tmp_path):
    from conftest import run_pretrain

    # configs/models/qwen2-demo.json has 1024 positions; a prompt needs EOS and one token of its own beside the new ones
    out = run_pretrain("configs/demo.yaml", "--max_new_tokens", 1023, "--output_dir", tmp_path / "out", timeout=120)
    assert out.returncode != 0 and "Traceback" not in out.stdout, out.stdout[-2000:]
    error = [line for line in out.stdout.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "--max_new_tokens 1023" in error[0] and "1,024 positions" in error[0] and "at most 1,022" in error[0], out.stdout
    assert not (tmp_path / "out").exists()  # refused before the output folder or any cache was made
