"""What a user sees is true, and the tools are as careful as training: hostile cases for generate and plot, written
before reading the code that handles them, on the session's one tiny real run."""
import os
import pickle
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import REPO, heavy_imports_after_help
from tiny_run import tiny_run


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory) / "out"


def tool(name, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", f"zhpretrain.{name}", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def one_paragraph(proc, *names):
    """Exit 2, no traceback, one `error:` paragraph naming each of names."""
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    paragraphs = [p for p in proc.stderr.split("\n\n") if p.strip()]
    assert len(paragraphs) == 1 and paragraphs[0].strip().startswith("error: "), proc.stderr
    for name in names:
        assert str(name) in paragraphs[0], (name, paragraphs[0])
    return paragraphs[0]


# --- plot --out ---

def test_plot_out_an_existing_file_is_one_paragraph_and_the_file_is_kept(run, tmp_path):
    target = tmp_path / "pictures.png"
    target.write_bytes(b"the user's own file")
    one_paragraph(tool("plot", run, "--out", target), target, "--out")
    assert target.read_bytes() == b"the user's own file" and sorted(tmp_path.iterdir()) == [target]


def test_plot_out_below_a_file_is_one_paragraph(run, tmp_path):
    (tmp_path / "a-file").write_text("x")
    one_paragraph(tool("plot", run, "--out", tmp_path / "a-file" / "images"), "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


# --- generate on pickles ---

class Marker:
    """Unpickling this writes a file: proof that a pickle was run."""
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("with_config", [False, True])
def test_generate_on_a_pickled_model_says_it_loads_only_safetensors_and_runs_nothing(run, tmp_path, with_config):
    folder = tmp_path / "model"
    folder.mkdir()
    marker = tmp_path / "pickle-was-run"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"weights": Marker(str(marker))}))
    if with_config:  # a whole model folder, the weights pickled
        for p in (run / "final").iterdir():
            if p.name != "model.safetensors":
                shutil.copy(p, folder / p.name)
    paragraph = one_paragraph(tool("generate", folder, "--prompt", "长江是"), folder, "safetensors", "pytorch_model.bin")
    assert "save_pretrained" in paragraph  # what to do: convert it
    assert not marker.exists()


# --- generate: a prompt longer than the model's positions ---

@pytest.mark.slow  # over 8 s on 2 quiet cores: `make test` stays under 5 minutes; CI runs it
def test_generate_a_prompt_longer_than_the_positions_is_cut_with_one_line(run):
    import json

    positions = json.loads((run / "final" / "config.json").read_text())["max_position_embeddings"]
    prompt = "长江是中国最长的河流。" * (positions // 4)  # far more tokens than positions
    proc = tool("generate", run / "final", "--prompt", prompt, "--max_new_tokens", 8, "--seed", 0)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    notes = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(notes) == 1 and f"{positions:,}" in notes[0] and "prompt" in notes[0], proc.stderr
    assert proc.stdout.startswith(prompt) and len(proc.stdout.rstrip("\n")) > len(prompt)


@pytest.mark.slow  # over 8 s on 2 quiet cores: `make test` stays under 5 minutes; CI runs it
def test_generate_max_new_tokens_beyond_the_positions_is_refused(run):
    import json

    positions = json.loads((run / "final" / "config.json").read_text())["max_position_embeddings"]
    one_paragraph(tool("generate", run / "final", "--prompt", "长江是", "--max_new_tokens", positions + 10),
                  "--max_new_tokens", f"{positions:,} positions")


# --- generate: Ctrl-C while it writes ---

def test_ctrl_c_during_generation_keeps_the_text_and_exits_130(run):
    proc = subprocess.Popen([sys.executable, "-m", "zhpretrain.generate", str(run / "final"), "--prompt", "长江是",
                             "--max_new_tokens", "1000", "--temperature", "1", "--seed", "0"], cwd=REPO,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = b""
    while len(seen.decode(errors="ignore")) < len("长江是") + 3:  # the prompt and a few generated characters
        chunk = os.read(proc.stdout.fileno(), 4096)
        assert chunk, "generate ended before anything was generated"
        seen += chunk
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    out, err = (seen + rest).decode(), err.decode()
    assert proc.returncode == 130 and "Traceback" not in err and "threading" not in err, err
    assert out.startswith(seen.decode(errors="ignore")) and out.endswith("\n")
    assert not out.rstrip("\n").endswith("\ufffd")  # no character cut in half (an invalid byte the model chose stays)
    assert len(out.strip()) < len("长江是") + 1000  # interrupted, not finished


def test_generate_help_names_one_default_per_option():
    import re

    proc = tool("generate", "--help", timeout=60)
    assert proc.returncode == 0
    options = re.split(r"\n  (?=-)", proc.stdout.split("options:", 1)[1])
    assert len(options) >= 9 and all(o.count("(default:") <= 1 for o in options), options
    assert "(default: None)" not in proc.stdout
    # and it is printed before torch and transformers load (they took 5 s here before 2026-12-02): neither is imported
    assert heavy_imports_after_help("generate", "generate.main") == "loaded: []"


# --- samples are text ---

def test_a_character_cut_by_the_byte_level_decode_is_dropped_and_control_characters_shown(run):
    from transformers import AutoTokenizer

    from zhpretrain.model.sampling import decode

    tok = AutoTokenizer.from_pretrained(run / "final")
    ids = tok("长江鬣", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids[:-1]).endswith("\ufffd")  # the case is real: 鬣 is several byte tokens, the last one missing
    assert decode(tok, ids[:-1]) == "长江" and decode(tok, ids) == "长江鬣"
    assert decode(tok, tok("a\x00b\x1b[2Jc\n\td", add_special_tokens=False)["input_ids"]) == "a\u2400b\u241b[2Jc\n\td"


def test_training_samples_are_printed_and_logged_as_text(run):
    import swanlab_log

    lines = [line for line in (run / "train.log").read_text(encoding="utf-8").splitlines() if "sample @ step" in line]
    assert len(lines) == 3 * 3 + 1  # three prompts at each of three evaluations, then the final sample
    texts = [line.split(": ", 1)[1] for line in lines]
    for text in texts:
        assert text[0] in "陕长数" and not text.endswith("\ufffd"), text  # the prompt, not a repr's quote
        assert not [c for c in text if ord(c) < 32 or ord(c) == 127], text
    logged = swanlab_log.texts(swanlab_log.run_dirs(run.parent / "swanlog")[-1])
    assert [t.replace("\n", "\u23ce") for _, items in logged["samples"] for t in items] == texts[:-1]


# --- make demo, the demo preset's comment, generate --help ---

def test_make_demo_runs_the_demo_preset_even_with_the_corpus_in_data(tmp_path, monkeypatch):
    from zhpretrain import config

    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    (tmp_path / "data").mkdir()
    shutil.copy(REPO / "data" / "demo-zhwiki.jsonl", tmp_path / "data")
    (tmp_path / "data" / "wikipedia-zh-cn-20240820.json").write_text('[{"text": "长江是中国最长的河流。"}]', encoding="utf-8")
    # -o: the venv counts as installed, so only the demo's own command is printed (-n: printed, not run).
    proc = subprocess.run(["make", "-n", "-o", ".venv/.runtime", "demo"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    [command] = [line.split() for line in proc.stdout.splitlines() if "pretrain.py" in line]
    args = command[command.index("pretrain.py") + 1:]
    monkeypatch.chdir(tmp_path)
    assert config.parse_args([])[1].train_file == "data/wikipedia-zh-cn-20240820.json"  # the stand-in is picked up
    assert config.parse_args(args)[1].train_file == "data/demo-zhwiki.jsonl"


def test_the_demo_presets_parameter_count_is_the_trained_models(run):
    import re

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run / "final")  # the tiny run trains the demo preset
    count = sum(p.numel() for p in model.parameters())
    [comment] = re.findall(r"([\d.]+)M parameters", (REPO / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    assert comment == f"{count / 1e6:.2f}", (comment, count)


# --- a correct resume looks correct ---

@pytest.mark.slow  # over 8 s on 2 quiet cores: `make test` stays under 5 minutes; CI runs it
def test_a_resume_of_a_tied_model_says_nothing_about_missing_lm_head(tmp_path):
    from conftest import run_pretrain

    common = ["--block_size", 32, "--per_device_train_batch_size", 4, "--eval_strategy", "no", "--eval_on_start", "false",
              "--logging_steps", 1, "--save_steps", 2, "--max_new_tokens", 2, "--output_dir", tmp_path / "out",
              "--cache_dir", tmp_path / "cache", "--swanlab_mode", "disabled"]
    first = run_pretrain(*common, "--max_steps", 2, cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:]
    second = run_pretrain(*common, "--max_steps", 3, "--allow_resume_changes", "true", cwd=tmp_path)
    assert second.returncode == 0, second.stdout[-3000:]
    assert "resuming from" in second.stdout and (tmp_path / "out" / "checkpoint-3").is_dir()  # a real resume
    assert "missing keys" not in second.stdout and "lm_head" not in second.stdout, second.stdout[-3000:]


def test_an_untied_models_missing_head_is_still_reported():
    import logging

    from transformers import AutoConfig, AutoModelForCausalLM

    from zhpretrain.report.console import TiedHeadFilter

    record = lambda: logging.LogRecord("transformers.trainer", logging.WARNING, "", 0,  # noqa: E731
                                       "There were missing keys in the checkpoint model loaded: ['lm_head.weight'].", None, None)
    tied = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(REPO / "configs/models/qwen2-demo.json"))
    untied = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(REPO / "configs/models/qwen2-demo.json",
                                                                         tie_word_embeddings=False))
    assert not TiedHeadFilter(tied).filter(record()) and TiedHeadFilter(untied).filter(record())


# --- plot writes where it should, after checking what it needs ---

def git_status():
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout


@pytest.mark.slow  # over 8 s on 2 quiet cores: `make test` stays under 5 minutes; CI runs it
def test_plot_writes_into_the_runs_own_folder_and_leaves_the_repository_alone(run, tmp_path):
    fresh = tmp_path / "demo"
    shutil.copytree(run, fresh)
    before, pictures = git_status(), {p: p.read_bytes() for p in (REPO / "images").glob("*.png")}
    proc = tool("plot", fresh)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (fresh / "images").iterdir()) == ["attention.png", "curves.png", "lr_schedule.png", "rope.png"]
    assert git_status() == before and {p: p.read_bytes() for p in (REPO / "images").glob("*.png")} == pictures
    again = tool("plot", fresh / "final")  # given the model folder: still the run's images/, not final/ (it is published)
    assert again.returncode == 0 and not (fresh / "final" / "images").exists(), again.stderr[-3000:]


def test_plot_without_a_chromium_for_swanlog_writes_nothing(run, tmp_path):
    fresh = tmp_path / "demo"
    shutil.copytree(run, fresh)
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}  # no chromium on this PATH
    proc = subprocess.run([sys.executable, "-m", "zhpretrain.plot", str(fresh), "--swanlog", str(run.parent / "swanlog")],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    one_paragraph(proc, "Chromium", "Nothing was written")
    assert not (fresh / "images").exists()
    proc = tool("plot", fresh, "--swanlog", tmp_path / "no-swanlog-here")
    one_paragraph(proc, "runs.swanlab", "nothing was written")
    assert not (fresh / "images").exists()
