"""Model shapes from config.json files: Qwen2, Llama and GPT-2, vocabulary padding, limits, parameter counts."""
import functools

import pytest
import torch

from zhpretrain.data import tokenizer
from zhpretrain.model import build as modeling
from zhpretrain.config import REPO, ModelArguments
from zhpretrain.errors import UserError


@functools.cache
def tok():
    """Trained on first use, not at import: collecting the tests trains nothing."""
    return tokenizer.train(iter(["陕西省是中国的一个省。"] * 20), vocab_size=300, max_chars=10**6)


TINY = "hidden_size=64,intermediate_size=128,num_hidden_layers=2,num_attention_heads=4,num_key_value_heads=2"


@pytest.mark.parametrize("shape,overrides", [
    ("qwen2-small", TINY), ("llama-small", TINY), ("gpt2-small", "n_embd=64,n_layer=2,n_head=4"),
    ("qwen2-tutorial", TINY), ("qwen2-demo", None)])
def test_shapes_build_and_train_a_step(shape, overrides):
    args = ModelArguments(model_config=str(REPO / "configs" / "models" / f"{shape}.json"), config_overrides=overrides)
    config = modeling.build_config(args, tok(), 128)
    assert config.vocab_size % 64 == 0 and config.vocab_size >= len(tok()) and config.vocab_size - len(tok()) < 64
    assert (config.eos_token_id, config.pad_token_id) == (tok().eos_token_id, tok().pad_token_id)
    model = modeling.build_model(config, seed=0)
    ids = torch.randint(0, len(tok()), (2, 16))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    counts = modeling.count_parameters(model)
    # Counted here another way: by parameter name, and from the config's shape.
    assert counts["parameters"] == sum(p.numel() for p in model.parameters())
    table = ("embed_tokens.weight", "wte.weight", "lm_head.weight")
    assert counts["non_embedding_parameters"] == sum(p.numel() for n, p in model.named_parameters() if not n.endswith(table))
    width = model.get_input_embeddings().embedding_dim
    assert counts["embedding_parameters"] == config.vocab_size * width * (1 if config.tie_word_embeddings else 2)


def test_same_seed_same_weights():
    args = ModelArguments(model_config=str(REPO / "configs/models/qwen2-demo.json"))
    config = modeling.build_config(args, tok(), 128)
    a, b = modeling.build_model(config, 3), modeling.build_model(config, 3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("shape,overrides", [("qwen2-demo", None), ("llama-small", TINY), ("gpt2-small", "n_embd=64,n_layer=2,n_head=4")])
def test_zero_init_residual_starts_every_block_as_the_identity(shape, overrides):
    args = ModelArguments(model_config=str(REPO / "configs" / "models" / f"{shape}.json"), config_overrides=overrides)
    config = modeling.build_config(args, tok(), 128)
    plain, zeroed = modeling.build_model(config, 5), modeling.build_model(config, 5, zero_init_residual=True)
    ids = torch.randint(0, len(tok()), (2, 16))
    out = zeroed(input_ids=ids, labels=ids, output_hidden_states=True)
    # Every block adds zero to the residual stream: each layer's output is the embedding it was given (GPT-2 adds its
    # learned positions first); the last entry of hidden_states is after the final norm.
    for h in out.hidden_states[1:-1]:
        assert torch.equal(h, out.hidden_states[0])
    # Only the output projections changed: every other weight is the seed's, and the model still learns through them.
    changed = {n for (n, a), b in zip(plain.named_parameters(), zeroed.parameters()) if not torch.equal(a, b)}
    assert changed and all(n.rsplit(".", 2)[-2] in ("o_proj", "down_proj", "c_proj") for n in changed)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in zeroed.named_parameters() if n in changed)


def test_zero_init_residual_with_init_from_is_refused_in_one_paragraph(tmp_path):
    from zhpretrain import config

    # it would silently do nothing: a continued model's weights are the source's
    with pytest.raises(UserError) as e:
        config.parse_args([str(REPO / "configs/demo.yaml"), "--init_from", str(tmp_path), "--zero_init_residual", "true"])
    message = " ".join(str(e.value).split())
    assert f"--zero_init_residual sets how a random model starts, and --init_from starts from the weights of {tmp_path}" in message
    assert "Leave --zero_init_residual out" in message


def test_zero_init_residual_is_part_of_the_run_identity_only_when_set():
    from zhpretrain.config import DataArguments, RunArguments
    from zhpretrain.run import resume

    assert resume.recipe_identity(DataArguments(), RunArguments(), ModelArguments()) == {}  # older runs still resume
    assert resume.recipe_identity(DataArguments(), RunArguments(), ModelArguments(zero_init_residual=True)) == \
        {"zero_init_residual": True}


def test_tutorial_shape_matches_the_original():
    config = modeling.build_config(ModelArguments(model_config=str(REPO / "configs/models/qwen2-tutorial.json")), tok(), 512)
    assert (config.model_type, config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
            config.intermediate_size) == ("qwen2", 512, 12, 8, 2048)


def test_limits_are_clear_errors():
    args = ModelArguments(model_config=str(REPO / "configs/models/qwen2-demo.json"))
    with pytest.raises(UserError, match="block_size 4096 is larger than the model's position limit 1024"):
        modeling.build_config(args, tok(), 4096)
    args.config_overrides = "vocab_size=64"
    with pytest.raises(UserError, match=f"tokenizer has {len(tok())} tokens but the model's vocab_size is 64"):
        modeling.build_config(args, tok(), 128)
    with pytest.raises(UserError, match="does not exist"):
        modeling.build_config(ModelArguments(model_config="configs/models/nope.json"), tok(), 128)
