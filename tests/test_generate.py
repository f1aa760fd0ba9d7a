"""python -m zhpretrain.generate: continuing prompts from a real tiny run's final/ and checkpoints, as a user runs it."""
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import REPO
from tiny_run import tiny_run


@pytest.fixture(scope="session")
def final(tmp_path_factory):
    return tiny_run(tmp_path_factory) / "out" / "final"


def generate(*args, stdin: str | None = None):
    return subprocess.run([sys.executable, "-m", "zhpretrain.generate", *map(str, args)], cwd=REPO, input=stdin,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # over 8 s on 2 quiet cores: `make test` stays under 5 minutes; CI runs it
def test_same_seed_same_text_and_the_text_continues_the_prompt(final):
    runs = [generate(final, "--prompt", "陕西省是", "--seed", seed, "--max_new_tokens", 12, "--temperature", 1.0)
            for seed in (1, 1, 2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-2000:]
    first, again, other = (r.stdout for r in runs)
    assert first == again
    assert first.startswith("陕西省是") and len(first.strip()) > len("陕西省是")
    assert other.startswith("陕西省是") and other != first  # 6 training steps leave a flat distribution: seeds differ


@pytest.mark.slow  # over 8 s on 2 quiet cores: `make test` stays under 5 minutes; CI runs it
def test_greedy_output_is_the_argmax_continuation_of_eos_plus_prompt(final):
    """A second implementation: an argmax loop over the model's logits, starting after EOS as training documents do."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    proc = generate(final, "--prompt", "长江是", "--temperature", 0, "--repetition_penalty", 1.0, "--max_new_tokens", 8)
    assert proc.returncode == 0, proc.stderr[-2000:]
    model, tok = AutoModelForCausalLM.from_pretrained(final).eval(), AutoTokenizer.from_pretrained(final)
    ids = [tok.eos_token_id] + tok.encode("长江是", add_special_tokens=False)
    new = []
    with torch.no_grad():
        for _ in range(8):
            nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            new.append(nxt)
    assert proc.stdout == "长江是" + tok.decode(new, skip_special_tokens=True) + "\n"


@pytest.mark.slow
def test_tokens_are_streamed_as_they_are_generated(final):
    from zhpretrain.generate import load
    from zhpretrain.model.sampling import Streamer, continue_prompt

    pieces = []

    class Recorder(Streamer):  # the tool's streamer, recording instead of printing
        def write(self, text, stream_end):
            pieces.append(text)

    model, tok = load(final)
    text = continue_prompt(model, tok, "数学是", max_new_tokens=16, seed=3, repetition_penalty=1.0,
                           streamer=Recorder(tok, skip_prompt=True, skip_special_tokens=True))
    assert len([p for p in pieces if p]) > 1  # many pieces, not the whole text at the end
    assert "数学是" + "".join(pieces) == text


@pytest.mark.slow
def test_interactive_reads_one_prompt_per_line_until_eof(final):
    proc = generate(final, "--max_new_tokens", 6, "--seed", 0, stdin="陕西省是\n\n长江是\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("陕西省是") and lines[1].startswith("长江是"), proc.stdout


@pytest.mark.slow
def test_ctrl_c_in_interactive_mode_leaves_without_a_traceback(final):
    # SIGINT back to its default in the child: a shell starts background jobs (a CI runner's, say) with it ignored.
    proc = subprocess.Popen([sys.executable, "-m", "zhpretrain.generate", str(final), "--max_new_tokens", "4"], cwd=REPO,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdin.write("陕西省是\n")
    proc.stdin.flush()
    assert proc.stdout.readline().startswith("陕西省是")  # answered: now it waits for the next line
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err


@pytest.mark.parametrize("where", ["missing", "run_folder"])
def test_a_folder_that_is_not_a_model_is_one_paragraph_and_exit_2(final, tmp_path, where):
    folder = tmp_path / "nothing-here" if where == "missing" else final.parent
    proc = generate(folder, "--prompt", "陕西省是")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    paragraphs = [p for p in proc.stderr.split("\n\n") if p.strip()]
    assert len(paragraphs) == 1 and paragraphs[0].strip().startswith("error: ") and str(folder) in paragraphs[0]
    if where == "run_folder":
        assert str(final) in paragraphs[0]  # it names the folder to pass instead


def test_a_checkpoint_without_tokenizer_uses_the_runs_final_or_asks_for_one(final, tmp_path):
    from zhpretrain.errors import UserError
    from zhpretrain.generate import load

    checkpoint = tmp_path / "run" / "checkpoint-6"
    checkpoint.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(final.parent / "checkpoint-6" / name, checkpoint / name)
    with pytest.raises(UserError, match="--tokenizer"):
        load(checkpoint)
    _, tok = load(checkpoint, tokenizer=str(final))
    shutil.copytree(final, tmp_path / "run" / "final")
    _, found = load(checkpoint)
    assert found.get_vocab() == tok.get_vocab()


def test_out_of_range_sampling_options_are_refused_before_loading(final):
    from zhpretrain.errors import UserError
    from zhpretrain.generate import main

    with pytest.raises(UserError, match=r"--top_p 1.5 .*--repetition_penalty 0.0"):
        main([str(final), "--prompt", "x", "--top_p", "1.5", "--repetition_penalty", "0"])
