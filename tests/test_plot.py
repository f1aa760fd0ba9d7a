"""python -m zhpretrain.plot: pictures of a real tiny run folder and its model, and the data they draw."""
import json
import shutil
import struct
import subprocess
import sys
import warnings

import pytest

from conftest import REPO
from tiny_run import TOKENS_PER_STEP, tiny_run


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory) / "out"


def png_size(path) -> tuple[int, int]:
    """Width and height from the PNG header, read without matplotlib or PIL."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


@pytest.mark.slow  # over 8 s on 2 quiet cores: `make test` stays under 5 minutes; CI runs it
def test_the_command_writes_every_picture_as_a_real_png(run, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "zhpretrain.plot", str(run), "--out", str(tmp_path / "images")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("curves.png", "lr_schedule.png", "attention.png", "rope.png"):
        path = tmp_path / "images" / name
        width, height = png_size(path)
        assert width >= 500 and height >= 300 and 15_000 < path.stat().st_size < 300_000, (name, width, height)


def test_curves_drawn_are_the_trainer_state_of_the_newest_checkpoint(run):
    from zhpretrain import plot

    state = json.loads((run / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    train = [(h["step"] * TOKENS_PER_STEP, h["loss"]) for h in state if "loss" in h]
    evals = [(h["step"] * TOKENS_PER_STEP, h["eval_loss"]) for h in state if "eval_loss" in h]
    assert [s for s, _ in train] == [2 * 512, 4 * 512, 6 * 512] and [s for s, _ in evals] == [0, 3 * 512, 6 * 512]

    fig = plot.draw_curves(plot.curves(plot.trainer_state(run)), "tiny")
    # Points flattened to x, y, x, y, ...: pytest.approx compares flat sequences (newer pytest refuses nested ones).
    drawn = {line.get_label(): line.get_xydata().ravel().tolist() for ax in fig.axes for line in ax.get_lines()}
    flat = lambda points: [v for p in points for v in p]  # noqa: E731
    assert drawn["train loss"] == pytest.approx(flat(train))
    assert drawn["eval loss"] == pytest.approx(flat(evals))
    assert drawn["eval bits per byte"] == pytest.approx(flat((h["step"] * 512, h["eval_bits_per_byte"]) for h in state if "eval_loss" in h))
    lr = plot.draw_lr(plot.curves(plot.trainer_state(run)), "tiny").axes[0].get_lines()[0].get_xydata()
    assert lr.ravel().tolist() == pytest.approx(flat((h["step"], h["learning_rate"]) for h in state if "loss" in h))


def test_an_interrupted_checkpoint_is_skipped(run, tmp_path):
    from zhpretrain import plot

    shutil.copytree(run / "checkpoint-3", tmp_path / "checkpoint-3")
    (tmp_path / "checkpoint-9").mkdir()  # the run died while writing it: no trainer_state.json
    (tmp_path / "checkpoint-12").mkdir()
    (tmp_path / "checkpoint-12" / "trainer_state.json").write_text('{"log_hist')
    assert plot.trainer_state(tmp_path) == tmp_path / "checkpoint-3" / "trainer_state.json"


def test_rope_picture_uses_the_models_own_rotary_angles(run):
    """cos(position x theta^(-2i/d)) from the rope_theta in config.json, against the table drawn."""
    import numpy as np

    from zhpretrain import plot
    from zhpretrain.generate import load

    config = json.loads((run / "final" / "config.json").read_text())
    theta = config["rope_parameters"]["rope_theta"]
    half = config["hidden_size"] // config["num_attention_heads"] // 2
    expected = np.cos(np.outer(np.arange(64), theta ** (-np.arange(half) * 2 / (2 * half))))
    model, _ = load(run / "final")
    inv_freq, table = plot.rope(model, 64)
    assert table.shape == (64, half) and np.allclose(table, expected, atol=1e-5)


def test_attention_labels_are_the_sentence_and_rows_are_causal_distributions(run):
    import numpy as np

    from zhpretrain import plot
    from zhpretrain.generate import load

    model, tok = load(run / "final", attn_implementation="eager")
    sentence = plot.SENTENCE + "鬣"  # a character the demo tokenizer splits into byte tokens
    labels, ids, weights = plot.attention(model, tok, sentence)
    assert labels[0] == "<eos>" and "".join(t for t in labels[1:] if t != "·") == sentence and labels[-1] == "·"
    assert ids[1:] == tok(sentence, add_special_tokens=False)["input_ids"] and ids[0] == tok.eos_token_id
    assert weights.shape == (model.config.num_attention_heads, len(ids), len(ids))
    assert np.allclose(weights.sum(-1), 1, atol=1e-4) and np.allclose(np.triu(weights, 1), 0)


def test_without_a_cjk_font_tokens_are_labelled_by_id_with_a_warning(run, monkeypatch):
    from matplotlib import font_manager

    from zhpretrain import plot

    monkeypatch.setattr(font_manager.fontManager, "ttflist", [f for f in font_manager.fontManager.ttflist
                                                              if "CJK" not in f.name and f.name not in plot.CJK_FONTS])
    import numpy as np

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = plot.draw_attention(["<eos>", "陕", "西"], [0, 11, 12], np.eye(3)[None].repeat(2, 0), 3, "t")
    assert any("fonts-noto-cjk" in str(w.message) for w in caught)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0", "11", "12"]


def test_a_folder_without_a_training_log_or_model_is_one_paragraph(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "zhpretrain.plot", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.strip().startswith("error: ")
    assert len([p for p in proc.stderr.split("\n\n") if p.strip()]) == 1
