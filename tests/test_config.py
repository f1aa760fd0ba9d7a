"""Presets, command-line overrides, unknown keys, bf16 fallback, and every YAML key commented."""
import re

import pytest

from zhpretrain import config
from zhpretrain.errors import UserError

PRESETS = sorted((config.REPO / "configs").glob("*.yaml"))


def test_preset_then_command_line_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    preset, data, model, run, training = config.parse_args(
        [str(config.DEMO_PRESET), "--learning_rate", "3e-4", "--output_dir", str(tmp_path / "x"), "--block_size", "64",
         "--sample_prompts", "甲", "乙", "--lr_scheduler_type", "linear"])
    assert preset == config.DEMO_PRESET
    assert training.learning_rate == 3e-4 and training.output_dir == str(tmp_path / "x")
    assert str(training.lr_scheduler_type) in ("linear", "SchedulerType.LINEAR") and data.block_size == 64
    assert run.sample_prompts == ["甲", "乙"]
    assert training.max_steps == 150 and training.weight_decay == 0.1  # from the preset and the dial
    assert data.train_file == str(config.REPO / "data" / "demo-zhwiki.jsonl")  # repo-relative, found from any folder


def test_no_preset_falls_back_to_the_demo_with_a_one_line_message(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    preset, *_ = config.parse_args(["--max_steps", "5"])
    assert preset == config.DEMO_PRESET
    out = capsys.readouterr().out.strip().splitlines()
    notes = [line for line in out if not line.startswith("dial: depth 4")]  # the demo is a point on the dial
    assert len(notes) == 1 and "fjcanyue/wikipedia-zh-cn" in notes[0] and "ModelScope" in notes[0]


def test_full_corpus_present_selects_the_tutorial_preset(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / config.WIKI_FILE).write_text("[]")
    preset, data, model, _, training = config.parse_args([])
    # the tutorial preset is depth 16 on the dial: block 2 x 512 = 1,024, learning rate 0.5 x 0.3118 x C^-0.125 ~ 9.9e-4
    assert preset == config.WIKI_PRESET and data.block_size == 1024 and training.learning_rate == pytest.approx(9.9e-4)
    assert training.bf16 is False  # no GPU here: fp32


def test_unknown_keys_suggest_the_closest(tmp_path):
    with pytest.raises(UserError, match="Unknown option '--learning_rat'. Did you mean '--learning_rate'"):
        config.parse_args(["--learning_rat", "1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("blok_size: 64\n")
    with pytest.raises(UserError, match="bad.yaml has an unknown key 'blok_size'. Did you mean 'block_size'"):
        config.parse_args([str(bad)])
    with pytest.raises(UserError, match="does not exist"):
        config.parse_args([str(tmp_path / "missing.yaml")])


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_preset_parses_and_every_key_is_commented(preset):
    config.parse_args([str(preset)])
    for line in preset.read_text(encoding="utf-8").splitlines():
        if re.match(r"^[a-z_]+:", line):
            assert re.search(r"\s#\s", line), f"{preset.name}: key without a comment: {line}"


def test_yaml_values_are_type_checked_and_streaming_needs_max_steps(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("block_size: 12.5  # not an int\n")
    with pytest.raises(UserError, match=r"^--block_size expects an integer, not '12.5' \(from .*bad.yaml\)\.$"):
        config.parse_args([str(bad)])
    one = tmp_path / "one.yaml"
    one.write_text("sample_prompts: 陕西省是  # one prompt, not a list\n")
    assert config.parse_args([str(one)])[3].sample_prompts == ["陕西省是"]
    with pytest.raises(UserError, match="streaming: true needs --max_steps"):
        config.parse_args(["--streaming", "true", "--max_steps", "-1", "--num_train_epochs", "1"])
