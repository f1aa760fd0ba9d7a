"""What a user sees: --help, --help-all, a wrong value in one line, the first line at once, compact log lines and samples
above the progress bar (never through it), and the same lines in output_dir/train.log."""
import json
import re
import subprocess
import sys

import pytest

from conftest import REPO, run_pretrain
from zhpretrain import config, console
from zhpretrain.errors import UserError

USAGE = "usage: python pretrain.py [configs/PRESET.yaml] [--option value ...]"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


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


def test_progress_bar_log_lines_samples_and_train_log(tmp_path):
    args = ["--max_steps", 10, "--eval_steps", 5, "--logging_steps", 5, "--save_steps", 10, "--block_size", 64,
            "--per_device_train_batch_size", 8, "--output_dir", tmp_path / "out", "--cache_dir", tmp_path / "cache",
            "--swanlab_mode", "disabled", "--sample_prompts", "陕西省是", "--max_new_tokens", 8]
    proc = run_pretrain(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert proc.stdout.splitlines()[0] == "zhpretrain: loading libraries ..."
    log = (tmp_path / "out" / "train.log").read_text(encoding="utf-8").splitlines()
    # On the console a line written above the bar ends a \r-separated segment of its own; through the bar it would
    # share a segment with the bar's text.
    segments = {ANSI.sub("", line.split("\r")[-1]) for line in proc.stdout.split("\n")}
    body = [line for line in log if not line.startswith("--- ")]
    assert body and all(line in segments for line in body), [line for line in body if line not in segments]
    assert "{'loss'" not in proc.stdout  # the Trainer's own dict lines are gone

    history = json.loads((tmp_path / "out" / "checkpoint-10" / "trainer_state.json").read_text())["log_history"]
    train = [line for line in body if line.startswith("step ")]
    assert [int(re.match(r"step (\d+)/10 ", line).group(1)) for line in train] == [5, 10]
    logged = [h["loss"] for h in history if "loss" in h]
    assert [float(re.search(r"\| loss ([\d.]+) \|", line).group(1)) for line in train] == [round(x, 4) for x in logged]
    assert all(re.search(r"\| lr \d\.\d\de-\d\d \| grad [\d.]+ \| [\d,]+ tok/s \| ETA \d+:\d\d:\d\d$", line) for line in train), train
    evals = [line for line in body if line.startswith("eval  step ")]
    assert [line.split(" |")[0] for line in evals] == ["eval  step 0", "eval  step 5", "eval  step 10"]
    samples = [re.match(r"(.*)sample @ step (\d+): '陕西省是", line) for line in body if "sample @" in line]
    assert [(m.group(1), int(m.group(2))) for m in samples] == [("eval ", 0), ("eval ", 5), ("eval ", 10), ("", 10)]
    assert any(line.startswith("final: eval_loss ") for line in body)

    # A re-run appends: the first run's lines stay, the second run's follow.
    again = run_pretrain(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-3000:]
    log2 = (tmp_path / "out" / "train.log").read_text(encoding="utf-8").splitlines()
    assert log2[:len(log)] == log and sum(line.startswith("--- ") for line in log2) == 2
    assert log2[-1].startswith("sample @ step 10: '陕西省是")
