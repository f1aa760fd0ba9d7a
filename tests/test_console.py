"""What a user sees: --help, --help-all, a wrong value in one line, the first line at once, compact log lines.
(The lines above the progress bar and train.log are checked on the demo run in test_pretrain.py.)"""
import re
import subprocess
import sys

import pytest

from conftest import REPO, heavy_imports_after_help
from zhpretrain import config
from zhpretrain.report import console
from zhpretrain.errors import UserError

USAGE = "usage: python pretrain.py [configs/PRESET.yaml] [--option value ...]"


def help_text(capsys, flag: str) -> str:
    with pytest.raises(SystemExit) as e:
        config.parse_args([flag])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_help_starts_with_usage_then_presets_and_the_common_options(capsys):
    out = help_text(capsys, "--help")
    assert out.splitlines()[0] == USAGE
    for preset in (REPO / "configs").glob("*.yaml"):
        assert f"configs/{preset.name} " in out
    for option in ("output_dir", "train_file", "validation_file", "block_size", "max_steps", "num_train_epochs",
                   "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "model_config",
                   "config_overrides", "swanlab_mode"):
        assert re.search(rf"^  --{option} [A-Z]+\n      \S", out, re.M), option
    assert "--adam_beta1" not in out and "--help-all" in out and len(out.splitlines()) < 80


def test_help_all_lists_every_option(capsys):
    out = help_text(capsys, "--help-all")
    assert out.splitlines()[0] == USAGE
    for option in ("--adam_beta1", "--lr_scheduler_type", "--tokenizer_vocab_size", "--sample_prompts", "--streaming"):
        assert option in out


@pytest.mark.parametrize("argv,message", [
    (["--max_steps", "abc"], "--max_steps expects an integer, not 'abc'."),
    (["--learning_rate=fast"], "--learning_rate expects a number, not 'fast'."),
    (["--streaming", "maybe"], "--streaming expects true or false, not maybe."),
])
def test_a_wrong_value_names_the_option_and_the_type(argv, message):
    with pytest.raises(UserError) as e:
        config.parse_args(argv)
    assert str(e.value) == message


def test_a_wrong_value_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "pretrain.py"), "--max_steps", "abc"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.strip()] == ["error: --max_steps expects an integer, not 'abc'."]
    assert proc.stdout.splitlines() == ["zhpretrain: loading libraries ..."]  # the first line, printed before the imports


def test_format_log_writes_numbers_as_numbers():
    line = console.format_log({"loss": 6.123456, "grad_norm": 0.8412, "learning_rate": 0.00195, "epoch": 0.5,
                               "tokens_seen": 40960, "tokens_per_second": 2310.4}, step=20, max_steps=300, eta=112.4)
    assert line == "step 20/300 | loss 6.1235 | lr 1.95e-03 | grad 0.841 | 2,310 tok/s | ETA 0:01:52"
    line = console.format_log({"eval_loss": 6.02, "eval_perplexity": 411.58, "eval_bits_per_byte": 2.7, "eval_runtime": 3.14,
                               "eval_samples_per_second": 10.0, "epoch": 1.0}, step=40, max_steps=300)
    assert line == "eval  step 40 | loss 6.0200 | ppl 411.58 | bits/byte 2.7000 | 3.1s"



def test_short_help_needs_neither_torch_nor_transformers_and_its_trainer_types_are_the_parsers():
    # --help is printed before the seconds-long imports: in a fresh interpreter, neither module is loaded after it.
    assert heavy_imports_after_help("config", "config.parse_args") == "loaded: []"
    from transformers import HfArgumentParser

    from zhpretrain.usage import TRAINER_KINDS

    actions = {a.dest: a for a in HfArgumentParser(config.argument_classes())._actions}
    assert {name: actions[name].type.__name__ for name in TRAINER_KINDS} == TRAINER_KINDS
