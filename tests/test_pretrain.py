"""End to end: pretrain.py run as a user runs it, its outputs, its SwanLab log, and its data statistics."""
import json
import os
import re

import pytest

import swanlab_log
from conftest import DEMO, run_pretrain, shared

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo preset, shortened: 40 steps with evaluations at 0, 20 and 40."""
    tmp = tmp_path_factory.mktemp("demo")
    args = ["--max_steps", 40, "--eval_steps", 20, "--save_steps", 20, "--output_dir", tmp / "out", "--cache_dir", tmp / "cache",
            "--swanlab_mode", "local", "--swanlab_log_dir", tmp / "swanlog", "--max_new_tokens", 16]
    proc = run_pretrain(*args, cwd=tmp)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return tmp, args, proc.stdout


def test_demo_writes_a_final_model_that_loads_and_generates(demo_run):
    tmp, _, out = demo_run
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    final = tmp / "out" / "final"
    assert (final / "model.safetensors").is_file() and not list(final.glob("pytorch_model*"))
    # What a user loads and its model card, readable by others like any file they create; no pickle (training_args.bin).
    assert sorted(p.name for p in final.iterdir()) == ["README.md", "config.json", "generation_config.json", "model.safetensors",
                                                       "tokenizer.json", "tokenizer_config.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in final.iterdir()} == {0o666 & ~umask}  # 0o644 with the usual umask 022
    model, tok = AutoModelForCausalLM.from_pretrained(final), AutoTokenizer.from_pretrained(final)
    assert model.config.vocab_size >= len(tok) and tok.pad_token_id != tok.eos_token_id
    text = pipeline("text-generation", model=str(final))("陕西省是", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text.startswith("陕西省是") and len(text) > 4
    assert "sample @ step 40: 陕西省是" in out
    assert "not found, so running the demo preset" in out


def test_demo_eval_loss_falls_and_data_stats_are_written(demo_run):
    tmp, _, out = demo_run
    state = json.loads((tmp / "out" / "checkpoint-40" / "trainer_state.json").read_text())
    evals = [h for h in state["log_history"] if "eval_loss" in h]
    assert [h["step"] for h in evals] == [0, 20, 40]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.5
    assert all(h["eval_bits_per_byte"] > 0 and h["eval_perplexity"] > 1 for h in evals)
    stats = json.loads((tmp / "out" / "data_stats.json").read_text())
    for split in ("train", "test"):
        s = stats[split]
        assert s["documents"] > 0 and s["blocks"] == s["tokens"] // 128 == s["tokens_in_blocks"] // 128
    # Counted independently: every demo document tokenized by the saved tokenizer, plus one EOS each.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp / "out" / "final")
    texts = [json.loads(line)["text"] for line in DEMO.read_text(encoding="utf-8").splitlines()]
    assert stats["train"]["documents"] + stats["test"]["documents"] == len(texts)
    assert stats["train"]["tokens"] + stats["test"]["tokens"] == sum(len(tok(t)["input_ids"]) + 1 for t in texts)
    assert stats["train"]["bytes"] + stats["test"]["bytes"] == sum(len(t.encode()) for t in texts)
    assert f"train: {stats['train']['documents']:,} documents, {stats['train']['tokens']:,} tokens" in out


def test_demo_swanlab_log_holds_train_and_eval_curves_samples_and_config(demo_run):
    tmp, _, _ = demo_run
    [run] = swanlab_log.run_dirs(tmp / "swanlog")
    curves = swanlab_log.scalars(run)
    assert [s for s, _ in curves["train/loss"]] == [10, 20, 30, 40]
    assert [s for s, _ in curves["eval/loss"]] == [0, 20, 40]
    assert curves["eval/loss"][-1][1] < curves["eval/loss"][0][1]
    for key in ("eval/perplexity", "eval/bits_per_byte", "train/learning_rate", "train/grad_norm", "train/tokens_per_second"):
        assert key in curves, sorted(curves)
    samples = swanlab_log.texts(run)
    assert [s for s, _ in samples["samples"]] == [0, 20, 40] and samples["samples"][-1][1][0].startswith("陕西省是")
    assert samples["final_sample"][0][1][0].startswith("陕西省是")
    config = swanlab_log.config(run)
    assert config["data_stats"]["train"]["blocks"] > 0 and config["non_embedding_parameters"] > 0
    assert config["model"]["model_config"].endswith("qwen2-depth.json") and config["training"]["max_steps"] == 40
    assert "num_hidden_layers=4,hidden_size=128" in config["model"]["config_overrides"]  # the demo: depth 4 on the dial


def first_run_log(tmp) -> list[str]:
    """train.log as the demo run wrote it (a later test re-runs the command and appends)."""
    lines = (tmp / "out" / "train.log").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("--- ")
    return lines[:next((i for i, line in enumerate(lines) if i and line.startswith("--- ")), len(lines))]


def test_log_lines_and_samples_are_above_the_progress_bar_and_in_train_log(demo_run):
    tmp, _, out = demo_run
    assert out.splitlines()[0] == "zhpretrain: loading libraries ..."  # printed before torch and transformers load
    body = first_run_log(tmp)[1:]
    # A line written above the bar ends a \r-separated segment of its own; written through the bar it would share one.
    segments = {ANSI.sub("", line.split("\r")[-1]) for line in out.split("\n")}
    assert body and [line for line in body if line not in segments] == []
    assert "{'loss'" not in out  # the Trainer's own dict lines are gone

    history = json.loads((tmp / "out" / "checkpoint-40" / "trainer_state.json").read_text())["log_history"]
    train = [line for line in body if line.startswith("step ")]
    assert [int(re.match(r"step (\d+)/40 ", line).group(1)) for line in train] == [10, 20, 30, 40]
    logged = [h["loss"] for h in history if "loss" in h]
    assert [float(re.search(r"\| loss ([\d.]+) \|", line).group(1)) for line in train] == [round(x, 4) for x in logged]
    assert all(re.search(r"\| lr \d\.\d\de-\d\d \| grad [\d.]+ \| [\d,]+ tok/s \| ETA \d+:\d\d:\d\d$", line)
               for line in train), train
    evals = [line for line in body if line.startswith("eval  step ")]
    assert [line.split(" |")[0] for line in evals] == ["eval  step 0", "eval  step 20", "eval  step 40"]
    samples = [re.match(r"(.*)sample @ step (\d+): (?!')\S", line) for line in body if "sample @" in line]
    assert [(m.group(1), int(m.group(2))) for m in samples] == [("eval ", s) for s in (0, 20, 40) for _ in range(3)] + [("", 40)]
    assert any(line.startswith("final: eval_loss ") for line in body)


@pytest.mark.slow  # over 8 s on 2 quiet cores: `make test` stays under 5 minutes; CI runs it
def test_rerunning_the_same_command_resumes_and_does_not_train_again(demo_run):
    tmp, args, _ = demo_run
    proc = run_pretrain(*args, "--swanlab_mode", "disabled", cwd=tmp)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "checkpoint-40 is already at the last step" in proc.stdout and "sample @ step 40: 陕西省是" in proc.stdout
    assert "tokenizer: " in proc.stdout and "tokenizing:" not in proc.stdout  # tokenizer and blocks came from the cache
    assert not (tmp / "out" / "checkpoint-41").exists()
    log = (tmp / "out" / "train.log").read_text(encoding="utf-8").splitlines()  # appended, not replaced
    assert log[:len(first_run_log(tmp))] == first_run_log(tmp) and sum(line.startswith("--- ") for line in log) == 2
    assert log[-2].startswith("sample @ step 40: 陕西省是")
    # budget.py's report tells this launch's time, not the first launch's line again; then the run's own times
    assert re.fullmatch(r"time: nothing left to train in this launch \(the run was already at step 40\); it took \d+:\d\d; "
                        r"the run's training took \d+:\d\d, evaluation \d+:\d\d, saving \d+:\d\d", log[-1]), log[-1]


@pytest.mark.slow
def test_json_array_file_trains(tmp_path):
    proc = run_pretrain("--train_file", shared("zhwiki-sample.json"), "--max_steps", 5, "--eval_steps", 5, "--output_dir",
                        tmp_path / "out", "--cache_dir", tmp_path / "cache", "--swanlab_mode", "disabled", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    stats = json.loads((tmp_path / "out" / "data_stats.json").read_text())
    assert stats["train"]["documents"] + stats["test"]["documents"] == 1044


@pytest.mark.slow
def test_blocks_keep_at_least_999_per_mille_of_the_val_tokens(tmp_path):
    proc = run_pretrain("--train_file", shared("zhwiki-val.jsonl"), "--block_size", 512, "--tokenizer_vocab_size", 8000,
                        "--max_steps", 1, "--eval_on_start", "false", "--output_dir", tmp_path / "out", "--cache_dir",
                        tmp_path / "cache", "--swanlab_mode", "disabled", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    stats = json.loads((tmp_path / "out" / "data_stats.json").read_text())
    kept = sum(s["tokens_in_blocks"] for s in stats.values()) / sum(s["tokens"] for s in stats.values())
    assert kept >= 0.999, stats
    assert stats["train"]["documents"] + stats["test"]["documents"] == 2470


@pytest.mark.slow  # over 8 s on 2 quiet cores: `make test` stays under 5 minutes; CI runs it
def test_user_errors_print_one_paragraph_and_no_traceback(tmp_path):
    proc = run_pretrain("--train_file", tmp_path / "nothing-*.jsonl", "--output_dir", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout
    assert "nothing-*.jsonl' matches no file" in proc.stdout
    proc = run_pretrain("--max_step", 3, cwd=tmp_path)
    assert proc.returncode == 2 and "Did you mean '--max_steps'" in proc.stdout and "Traceback" not in proc.stdout
