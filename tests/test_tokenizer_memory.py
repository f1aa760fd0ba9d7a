"""The BPE trainer's peak memory on a hostile input, measured for real: the RSS of the pipeline's tokenizer process.

The input is one CJK document of 2 M characters without punctuation or spaces, drawn (seeded, so always the same)
from the 20,902 CJK Unified Ideographs: Qwen2's split makes it one word, and every 2,000-character piece the trainer
sees is distinct, the worst case for the trainer's tables (~0.2 KB per character of distinct words: with the 1/20
limit below removed, the peak was 361 MB above the short document's). The pipeline lets one document give at most
1/20 of tokenizer_train_max_chars (here 2 M, so 100,000 characters: ~23 MB of tables) whatever its length.

The bound, 120 MB above the same process trained on a 20,000-character cut of the same document: those tables, plus
the document itself, which the child holds a few times over (the JSON line, 6 MB; the str, 4 MB; its first cut).
The second input spreads the same 2 M characters over 400 documents, each within its share: there the bound holds
only because the trainer is given Han runs cut at rare pairs (data/rare_pairs.py)."""
import random
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO, write_jsonl
from zhpretrain.data import split, tokenizer

LENGTH, ALPHABET = 2_000_000, [chr(c) for c in range(0x4E00, 0x9FA6)]
MAX_CHARS, BOUND_MB = 2_000_000, 120

CHILD = textwrap.dedent("""
    import resource, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from zhpretrain.config import DataArguments, ModelArguments
    from zhpretrain.data import tokenizer
    data_args = DataArguments(train_file=sys.argv[2], validation_split_percentage=1)
    model_args = ModelArguments(tokenizer_vocab_size=2048, tokenizer_train_max_chars=int(sys.argv[3]))
    tokenizer.train_and_save(data_args, model_args, Path(sys.argv[4]))
    print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)  # KiB: the tokenizer process, the only child
""")


def _peak_mb(tmp_path, name: str, text: str | list[str]) -> float:
    corpus = write_jsonl(tmp_path / f"{name}.jsonl", [{"text": t} for t in ([text] if isinstance(text, str) else text)])
    out = subprocess.run([sys.executable, "-c", CHILD, str(REPO), str(corpus), str(MAX_CHARS), str(tmp_path / name)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / name / "tokenizer.json").is_file()
    return int(out.stdout.split()[-1]) / 1024


@pytest.mark.slow  # ~30 s of CPU (four processes importing torch), minutes of wall time on a loaded machine
def test_peak_memory_is_bounded_on_one_long_cjk_document(tmp_path):
    document = "".join(random.Random(0).choices(ALPHABET, k=LENGTH))
    assert not split.Split(42, 1).is_test(document) and not split.Split(42, 1).is_test(document[:20_000])  # trained on
    baseline = _peak_mb(tmp_path, "short", document[:20_000])
    peak = _peak_mb(tmp_path, "long", document)
    print(f"peak {peak:.0f} MB, baseline {baseline:.0f} MB")
    assert peak - baseline < BOUND_MB, f"peak {peak:.0f} MB, {peak - baseline:.0f} MB above the short document's"


@pytest.mark.slow  # as above
def test_peak_memory_is_bounded_on_many_distinct_cjk_documents(tmp_path):
    # 400 documents of 5,000 random ideographs: each under the 1/20 share, 2 M characters of distinct clauses in all,
    # so whole-run training held ~2 M characters of distinct words (~0.4 GB). Their pairs are rare (each of the 437 M
    # possible pairs is seen about 0.005 times), so the cut leaves single characters.
    rng = random.Random(1)
    documents = ["".join(rng.choices(ALPHABET, k=5_000)) for _ in range(400)]
    documents = [d for d in documents if not split.Split(42, 1).is_test(d)]
    baseline = _peak_mb(tmp_path, "short", documents[0][:20_000])
    peak = _peak_mb(tmp_path, "many", documents)
    print(f"peak {peak:.0f} MB, baseline {baseline:.0f} MB")
    assert peak - baseline < BOUND_MB, f"peak {peak:.0f} MB, {peak - baseline:.0f} MB above the one document's"
