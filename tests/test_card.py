"""The model card: the run's curves picture travels inside final/, and what the card says is read from the files."""
import json
from types import SimpleNamespace

from zhpretrain.report import card
from zhpretrain.config import DataArguments, ModelArguments

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def final_folder(tmp_path):
    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    (final / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 64,
                                                   "n_layer": 2, "n_head": 2, "vocab_size": 320, "n_positions": 128}))
    return final


def write(final, log_history, step=30):
    state = SimpleNamespace(global_step=step, log_history=log_history)
    params = {"parameters": 1000, "embedding_parameters": 400, "non_embedding_parameters": 600}
    stats = {"train": {"streaming": True}, "test": {"documents": 3, "tokens": 900, "blocks": 7}}
    path = card.write(final, state, DataArguments(train_file="corpus/*.jsonl"), ModelArguments(tokenizer_name_or_path="qwen2"),
                      params, stats, tokens_per_step=512, tokens=151647, given={"dataset_name": "modelscope:zh/wiki"})
    return path.read_text(encoding="utf-8")


def test_the_curves_picture_is_copied_into_final_and_shown(tmp_path):
    final = final_folder(tmp_path)
    (final.parent / "curves.png").write_bytes(PNG)
    text = write(final, [{"step": 30, "eval_loss": 2.0, "eval_perplexity": 7.389, "eval_bits_per_byte": 1.25}])
    assert (final / "curves.png").read_bytes() == PNG and "![training curves](curves.png)" in text
    assert "| 30 | 2.0000 | 7.39 | 1.2500 |" in text
    assert "30 optimizer steps x 512 tokens per step = 15,360 tokens trained" in text
    assert "hub dataset `modelscope:zh/wiki`" in text and "151,647 tokens" in text and "Qwen2's tokenizer" in text
    assert "n_embd 64, n_layer 2, n_head 2, vocab_size 320, n_positions 128" in text
    assert "test split: 3 documents, 900 tokens, 7 blocks" in text and "train split" not in text  # streamed: not counted


def test_without_a_picture_or_an_evaluation_the_card_says_so(tmp_path):
    final = final_folder(tmp_path)
    text = write(final, [{"step": 30, "loss": 3.0}])
    assert "curves.png" not in text and not (final / "curves.png").exists()
    assert "## Final evaluation (held-out split)\n\nnot evaluated" in text
