"""What a user sees is true, and the tools are as careful as training: hostile cases for generate and plot, written
before reading the code that handles them, on the session's one tiny real run."""
import os
import pickle
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import REPO
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

def test_generate_a_prompt_longer_than_the_positions_is_cut_with_one_line(run):
    import json

    positions = json.loads((run / "final" / "config.json").read_text())["max_position_embeddings"]
    prompt = "长江是中国最长的河流。" * (positions // 4)  # far more tokens than positions
    proc = tool("generate", run / "final", "--prompt", prompt, "--max_new_tokens", 8, "--seed", 0)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    notes = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(notes) == 1 and f"{positions:,}" in notes[0] and "prompt" in notes[0], proc.stderr
    assert proc.stdout.startswith(prompt) and len(proc.stdout.rstrip("\n")) > len(prompt)


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
    assert out.startswith(seen.decode(errors="ignore")) and out.endswith("\n") and "\ufffd" not in out
    assert len(out.strip()) < len("长江是") + 1000  # interrupted, not finished


def test_generate_help_names_one_default_per_option():
    import re

    proc = tool("generate", "--help", timeout=60)
    assert proc.returncode == 0
    options = re.split(r"\n  (?=-)", proc.stdout.split("options:", 1)[1])
    assert len(options) >= 9 and all(o.count("(default:") <= 1 for o in options), options
    assert "(default: None)" not in proc.stdout
