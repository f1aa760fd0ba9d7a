"""Hub sources with local stand-ins: hub ids resolved from a cache laid out like the hubs' own, offline failures that
are fast and say what to do, a ModelScope dataset read as files, --init_from starting from the source's weights, and the
model card (uploads of final/: test_publish.py)."""
import json
import os
import socket
import time
from pathlib import Path

import pytest

import pretrain
from conftest import DEMO, REPO, run_pretrain
from zhpretrain import hub
from zhpretrain.data import tokenizer
from zhpretrain.model import build as model
from zhpretrain.errors import UserError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def closed_port_url() -> str:
    """An endpoint on this machine that refuses connections: 'offline' whatever the network of the machine running the test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Both hubs unreachable and both caches empty."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", closed_port_url())
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", closed_port_url())
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-empty"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms-empty"))
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)


def tiny_causal_lm(folder: Path) -> Path:
    """A Qwen2 small enough to train in a second, with a byte-level BPE: the files a hub snapshot of a causal LM holds."""
    from transformers import AutoModelForCausalLM, Qwen2Config, set_seed

    texts = [json.loads(line)["text"] for line in DEMO.read_text(encoding="utf-8").splitlines()]
    tok = tokenizer.train(iter(texts), vocab_size=300, max_chars=10**6)
    config = Qwen2Config(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=256, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    set_seed(1)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def hf_cache_snapshot(cache: Path, repo: str) -> Path:
    """The layout huggingface_hub's cache uses: models--ORG--NAME/{refs/main, snapshots/<commit>/}."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    return root / "snapshots" / COMMIT


def test_names_local_folders_hugging_face_and_modelscope_ids(tmp_path):
    assert hub.parse("modelscope:Qwen/Qwen2-0.5B") == (hub.MODELSCOPE, "Qwen/Qwen2-0.5B")
    assert hub.parse("Qwen/Qwen2-0.5B") == (hub.HF, "Qwen/Qwen2-0.5B")
    assert hub.parse("hf:gpt2") == (hub.HF, "gpt2")
    (tmp_path / "runs").mkdir()
    assert hub.parse(str(tmp_path / "runs")) == (None, str(tmp_path / "runs"))  # a path, even with a slash
    assert hub.parse("./runs/demo/final")[0] is None and hub.parse("qwen2")[0] is None


def test_ids_resolve_from_the_hubs_caches_without_network(tmp_path, offline, monkeypatch):
    source = tiny_causal_lm(tmp_path / "tiny")
    snapshot = hf_cache_snapshot(tmp_path / "hf", "zh/tiny")
    snapshot.parent.mkdir(parents=True)
    source.rename(snapshot)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    legacy = tmp_path / "ms" / "models" / "zh" / "tiny___v1"  # ModelScope's cache: dots in names become ___
    legacy.parent.mkdir(parents=True)
    legacy.symlink_to(snapshot, target_is_directory=True)
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))

    started = time.perf_counter()
    assert hub.snapshot("zh/tiny", "--init_from", patterns=hub.MODEL_FILES) == snapshot
    assert hub.snapshot("modelscope:zh/tiny.v1", "--init_from", patterns=hub.MODEL_FILES).resolve() == snapshot
    hf_tok, ms_tok = tokenizer.load("zh/tiny"), tokenizer.load("modelscope:zh/tiny.v1")
    assert time.perf_counter() - started < 10
    text = "陕西省是中国的一个省。"
    assert hf_tok(text)["input_ids"] == ms_tok(text)["input_ids"] == tokenizer.load(str(snapshot))(text)["input_ids"]
    assert model.init_config(str(snapshot)).hidden_size == 32


def test_a_snapshot_cached_for_its_tokenizer_is_not_taken_for_a_model(tmp_path, offline, monkeypatch):
    snapshot = hf_cache_snapshot(tmp_path / "hf", "zh/tok")
    tokenizer.train(iter(["陕西省是中国的一个省。"] * 20), vocab_size=300, max_chars=10**6).save_pretrained(snapshot)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    assert tokenizer.resolve("zh/tok") == snapshot
    with pytest.raises(UserError, match="--init_from 'zh/tok': Hugging Face .* cannot be reached"):
        hub.snapshot("zh/tok", "--init_from", patterns=hub.MODEL_FILES)


@pytest.mark.parametrize("name, option, command", [
    ("modelscope:Qwen/Qwen2-0.5B", "--tokenizer_name_or_path", "modelscope download --model Qwen/Qwen2-0.5B --local_dir DIR"),
    ("Qwen/Qwen2-0.5B", "--tokenizer_name_or_path", "hf download Qwen/Qwen2-0.5B --local-dir DIR"),
    ("modelscope:Qwen/Qwen2-0.5B", "--init_from", "modelscope download --model Qwen/Qwen2-0.5B --local_dir DIR"),
    ("modelscope:zh/wiki", "--dataset_name", "modelscope download --dataset zh/wiki --local_dir DIR"),
])
def test_offline_fails_at_once_naming_the_id_and_what_to_do(tmp_path, offline, name, option, command):
    argv = [option, name, "--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"),
            "--swanlab_mode", "disabled", "--max_steps", "1"]
    started = time.perf_counter()
    with pytest.raises(UserError) as e:
        pretrain.main(argv)
    assert time.perf_counter() - started < 5
    message = " ".join(str(e.value).split())
    hub_name = "ModelScope" if name.startswith("modelscope:") else "Hugging Face"
    assert f"{option} '{name}'" in message and f"{hub_name} (http://127.0.0.1:" in message and "cannot be reached" in message
    again = "--train_file" if option == "--dataset_name" else option
    assert f"`{command}` and pass {again} DIR" in message
    assert not (tmp_path / "out" / "final").exists()


def test_a_modelscope_dataset_is_read_as_files_from_its_snapshot(tmp_path, monkeypatch):
    folder = tmp_path / "ms" / "datasets" / "zh" / "wiki"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train.jsonl").write_bytes(DEMO.read_bytes())
    (folder / "configuration.json").write_text('{"framework": "pytorch"}')  # the hub's own files, not documents
    (folder / "README.md").write_text("# wiki")
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", closed_port_url())
    from zhpretrain.data import files, readers
    from zhpretrain.config import DataArguments, ModelArguments

    data_args, model_args = DataArguments(dataset_name="modelscope:zh/wiki"), ModelArguments()
    hub.fetch(data_args, model_args)
    assert data_args.dataset_name is None and files.find_files(data_args.train_file) == [str(folder / "data" / "train.jsonl")]
    texts = [t for t, *_ in readers.read_texts(files.find_files(data_args.train_file), None, False, readers.ReadStats())]
    assert texts[0] == json.loads(DEMO.read_text(encoding="utf-8").splitlines()[0])["text"]


def test_init_from_refuses_what_is_not_a_causal_lm(tmp_path):
    from transformers import ViTConfig

    ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8).save_pretrained(tmp_path / "vit")
    with pytest.raises(UserError, match="holds a 'vit' model .*not a causal language model"):
        model.init_config(str(tmp_path / "vit"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is not a model folder"):
        model.init_config(str(tmp_path / "empty"))


def test_init_from_grows_the_embeddings_for_an_added_pad_and_keeps_every_old_row(tmp_path):
    """A model whose tokenizer has no pad (like GPT-2): the pad we add lies past the last embedding row."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    from zhpretrain.config import ModelArguments

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.train_from_iterator(["陕西省是中国的一个省。"] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=[tokenizer.EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=tokenizer.EOS).save_pretrained(tmp_path / "m")
    rows = backend.get_vocab_size()
    config = LlamaConfig(vocab_size=rows, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=64)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "m")
    tok = tokenizer.load(str(tmp_path / "m"))
    assert len(tok) == rows + 1 and tok.pad_token_id == rows
    args = ModelArguments(init_from=str(tmp_path / "m"))
    grown = model.build_model(model.build_config(args, tok, 64), 0, init_from=args.init_from, tokens=len(tok),
                              pad_token_id=tok.pad_token_id)
    old = AutoModelForCausalLM.from_pretrained(tmp_path / "m").get_input_embeddings().weight
    new = grown.get_input_embeddings().weight
    assert new.shape[0] % 64 == 0 and rows < new.shape[0] <= rows + 64 and new[:rows].equal(old)
    assert grown.config.pad_token_id == rows


@pytest.fixture(scope="module")
def continued(tmp_path_factory):
    """pretrain.py --init_from a hub id found in a Hugging Face cache stand-in, with the hub unreachable: 1 step, then
    the same command with --max_steps 2 (a resume), then once more (finished: evaluate, save, sample)."""
    tmp = tmp_path_factory.mktemp("init")
    snapshot = hf_cache_snapshot(tmp / "hf", "zh/tiny")
    tiny_causal_lm(snapshot)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp / "hf"), "HF_ENDPOINT": closed_port_url()}
    # A constant rate: a cosine schedule ends at 0, and the resumed step would then not move the weights.
    args = ["--init_from", "zh/tiny", "--train_file", DEMO, "--block_size", 64, "--per_device_train_batch_size", 4,
            "--warmup_steps", 0, "--lr_scheduler_type", "constant", "--max_eval_samples", 4, "--per_device_eval_batch_size", 4,
            "--eval_on_start", "true", "--eval_steps", 1, "--save_steps", 1, "--output_dir", tmp / "out", "--cache_dir", tmp / "cache", "--swanlab_mode", "disabled"]
    # Asked to publish with the hub unreachable: the run saves final/ and its card, then says so and exits 3.
    first = run_pretrain(*args, "--max_steps", 1, "--push_to_hub", "true", "--hub_model_id", "me/tiny-zh", cwd=tmp, env=env)
    assert first.returncode == 3, first.stdout[-3000:]
    card = (tmp / "out" / "final" / "README.md").read_text(encoding="utf-8")
    # Raising max_steps changes the schedule, which the run's identity guards: allowed explicitly.
    second = run_pretrain(*args, "--max_steps", 2, "--allow_resume_changes", "true", cwd=tmp, env=env)
    assert second.returncode == 0, second.stdout[-3000:]
    third = run_pretrain(*args, "--max_steps", 2, cwd=tmp, env=env)  # already finished: loads its own last checkpoint
    assert third.returncode == 0 and "is already at the last step" in third.stdout, third.stdout[-3000:]
    return tmp, snapshot, first.stdout, second.stdout, card


@pytest.mark.slow
def test_a_failed_upload_after_training_exits_3_with_final_saved(continued):
    tmp, _, out, _, card = continued
    final = tmp / "out" / "final"
    assert "Could not publish to hf:me/tiny-zh: Hugging Face (http://127.0.0.1:" in " ".join(out.split())
    assert out.index("model saved to") < out.index("Could not publish") and "Traceback" not in out
    assert (final / "model.safetensors").is_file() and card.startswith("---")


@pytest.mark.slow
def test_init_from_starts_from_the_source_weights_and_tokenizer(continued):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zhpretrain.data import blocks

    tmp, snapshot, out, _, _ = continued
    assert "init_from: weights, shape and tokenizer from" in out and "model_config is not used" in out
    assert "byte-level BPE from" not in out  # no tokenizer was trained
    final = tmp / "out" / "final"
    assert AutoTokenizer.from_pretrained(final).get_vocab() == tokenizer.load(str(snapshot)).get_vocab()
    assert json.loads((final / "config.json").read_text())["hidden_size"] == 32
    # The step-0 evaluation is the source model's loss on the run's evaluation blocks, computed here independently.
    [cache] = [p for p in (tmp / "cache").iterdir() if p.name.startswith("blocks-")]
    test = blocks.datasets(cache, blocks.load(cache))["test"]
    ids = torch.stack([test[i]["input_ids"] for i in range(4)])
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(snapshot).eval()(input_ids=ids, labels=ids).loss.item()
    state = json.loads((tmp / "out" / "checkpoint-1" / "trainer_state.json").read_text())
    [step0] = [h["eval_loss"] for h in state["log_history"] if "eval_loss" in h and h["step"] == 0]
    assert step0 == pytest.approx(expected, abs=1e-5)


@pytest.mark.slow
def test_resuming_an_init_from_run_continues_from_its_own_checkpoint(continued):
    from safetensors.torch import load_file

    tmp, snapshot, _, out, _ = continued
    assert f"resuming from {tmp / 'out' / 'checkpoint-1'}" in out
    state = json.loads((tmp / "out" / "checkpoint-2" / "trainer_state.json").read_text())
    steps = [h["step"] for h in state["log_history"] if "eval_loss" in h]
    assert steps[:2] == [0, 1] and steps[-1] == 2  # run one's history carried on (eval_on_start evaluates step 1 again)
    source, one, two = (load_file(p / "model.safetensors") for p in (snapshot, tmp / "out" / "checkpoint-1", tmp / "out" / "checkpoint-2"))
    key = "model.layers.0.mlp.up_proj.weight"
    assert not source[key].equal(one[key]) and not one[key].equal(two[key])
    final = load_file(tmp / "out" / "final" / "model.safetensors")  # written again by the third, finished run
    assert all(final[k].equal(two[k]) for k in two)


@pytest.mark.slow
def test_the_model_card_states_what_the_run_did(continued):
    tmp, _, _, _, card = continued
    from transformers import AutoModelForCausalLM

    final = tmp / "out" / "final"
    state = json.loads((tmp / "out" / "checkpoint-1" / "trainer_state.json").read_text())
    [last] = [h for h in state["log_history"] if "eval_loss" in h and h["step"] == 1]
    parameters = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(final).parameters())
    stats = json.loads((tmp / "out" / "data_stats.json").read_text())
    assert f"| {last['eval_loss']:.4f} | {last['eval_perplexity']:.2f} | {last['eval_bits_per_byte']:.4f} |" in card
    assert f"{parameters:,} parameters" in card
    assert "1 optimizer steps x 256 tokens per step = 256 tokens trained" in card  # 4 sequences of 64 tokens, one step
    assert f"{stats['train']['documents']:,} documents, {stats['train']['tokens']:,} tokens" in card
    assert str(DEMO) in card and "continued from `zh/tiny`" in card and "The tokenizer of `zh/tiny`" in card
    assert "hidden_size 32" in card
    assert 'pipeline("text-generation"' in card and "curves.png" not in card  # no picture was made for this run
    assert (final / "README.md").read_text(encoding="utf-8").startswith("---\nlanguage: zh")


def test_the_readme_documents_each_source_and_target():
    for page in (REPO / "README.md", REPO / "docs" / "README.en.md"):  # the Chinese page and its English version
        readme = page.read_text(encoding="utf-8")
        for text in ("--tokenizer_name_or_path qwen2", "modelscope:", "--init_from", "--push_to_hub", "--push_to_modelscope"):
            assert text in readme, (page.name, text)
