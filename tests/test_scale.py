"""The one dial (zhpretrain/scale.py): values derived by hand from the rules in docs/recipe.md, parameter counts
against the real model, explicit options winning, and a real run whose logged learning rates follow the schedule."""
import json
import types

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from conftest import DEMO, REPO, failure, run_pretrain
from zhpretrain import config, scale


def test_shapes_by_hand():
    # hidden = 32 x depth; heads of 32 below hidden 512, of 64 from there; SwiGLU 3 x hidden; as many KV heads as heads
    assert scale.shape(4) == {"num_hidden_layers": 4, "hidden_size": 128, "intermediate_size": 384,
                              "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 32}
    assert scale.shape(12)["hidden_size"] == 384 and scale.shape(12)["num_attention_heads"] == 12
    assert scale.shape(16)["hidden_size"] == 512 and scale.shape(16)["num_attention_heads"] == 8  # 8 heads of 64
    assert scale.shape(17)["hidden_size"] == 576 and scale.shape(17)["num_attention_heads"] == 9  # 544 rounded up to 64s


@pytest.mark.parametrize("depth", [2, 4, 12])
def test_parameter_count_matches_the_real_model(depth):
    d = scale.derive(depth)
    cfg = AutoConfig.for_model("qwen2", **scale.shape(depth), vocab_size=d["options"]["tokenizer_vocab_size"], tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(cfg)
    assert sum(p.numel() for p in model.parameters()) == d["params"]
    assert sum(p.numel() for n, p in model.named_parameters() if "embed" not in n) == d["body_params"]


@pytest.mark.parametrize("depth", [4, 16])
def test_the_pipeline_builds_the_derived_shape(depth):
    # through the project's own config path (base config + derived overrides), not a config made here
    from zhpretrain.model.build import _read

    args = types.SimpleNamespace(init_from=None, model_config=str(REPO / scale.BASE_CONFIG), trust_remote_code=False,
                                 config_overrides=scale.config_overrides(depth, None))
    _, cfg = _read(args)
    s = scale.shape(depth)
    assert (cfg.hidden_size, cfg.num_attention_heads, getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads) == (s["hidden_size"], s["num_attention_heads"], s["head_dim"])
    cfg.vocab_size = scale.derive(depth)["options"]["tokenizer_vocab_size"]
    assert sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters()) == scale.derive(depth)["params"]


def test_depth_12_by_hand():
    # Body: 12 x (4*384^2 + 3*384 + 3*384*1152 + 2*384) + 384 = 23,026,560; vocabulary: the largest power of two
    # <= 23,026,560 / 384 = 59,965 is 32,768 (the cap). Scaling parameters 23,026,560 + 32,768*384 = 35,609,472;
    # horizon 12 x that = 427,313,664 tokens; C = 6 x 35,609,472 x 427,313,664 = 9.13e16 FLOPs;
    # DeepSeek's batch 0.292 C^0.3271 = 1.03e5 -> 2^17 = 131,072 (3,260 steps >= 2,000, so not halved);
    # learning rate 0.5 x 0.3118 C^-0.125 = 1.18e-3; block 2 x 384 = 768 -> 1,024.
    d = scale.derive(12)
    o = d["options"]
    assert d["body_params"] == 23_026_560 and o["tokenizer_vocab_size"] == 32768 and d["tokens"] == 427_313_664
    assert o["global_batch_tokens"] == 131_072 and o["max_steps"] == 3260
    assert o["learning_rate"] == pytest.approx(1.2e-3) and o["block_size"] == 1024
    assert o["warmup_steps"] == 65 and o["lr_scheduler_kwargs"]["num_decay_steps"] == 652  # 2% and 20% of 3,260


def test_small_batch_is_halved_until_the_run_has_2000_steps():
    # depth 3: body 360,960, vocabulary 2,048 (360,960 / 96 = 3,760), scaling 557,568, horizon 6,690,816 tokens;
    # DeepSeek's batch 0.292 x (6 x 557,568 x 6,690,816)^0.3271 = 6,794 -> 8,192 leaves 817 steps, 4,096 1,633:
    # halved twice, to 2,048 (3,267 steps).
    o = scale.derive(3)["options"]
    assert o["tokenizer_vocab_size"] == 2048 and o["global_batch_tokens"] == 2048 and o["max_steps"] == 3267


def test_explicit_options_win_and_the_console_says_which(capsys):
    preset, data, model, run, training = config.parse_args([str(REPO / "configs/small.yaml"), "--train_file", str(DEMO),
                                                            "--block_size", "512", "--learning_rate", "1e-3"])
    out = capsys.readouterr().out
    assert data.block_size == 512 and training.learning_rate == 1e-3 and run.muon_learning_rate == 1e-3  # one rate for both
    assert run.embedding_learning_rate is None  # not on the dial: it did not transfer with size (docs/recipe.md)
    assert model.tokenizer_vocab_size == 32768 and run.global_batch_tokens == 131_072 and data.document_attention
    assert "num_hidden_layers=12,hidden_size=384" in model.config_overrides
    assert "dial: depth 12 -> hidden 384" in out and "given instead of derived: block_size, learning_rate" in out


def test_depth_zero_init_from_and_a_model_config_turn_the_shape_off(tmp_path, capsys):
    preset, data, model, run, training = config.parse_args([str(REPO / "configs/tutorial.yaml"), "--train_file", str(DEMO),
                                                            "--depth", "0", "--model_config", "configs/models/qwen2-tutorial.json"])
    assert model.config_overrides is None and data.block_size == 512 and "dial:" not in capsys.readouterr().out
    # --init_from continues a model as it is: no dial
    preset, data, model, run, training = config.parse_args([str(REPO / "configs/small.yaml"), "--init_from", str(tmp_path)])
    assert model.config_overrides is None and run.muon_learning_rate is None and "dial:" not in capsys.readouterr().out
    # an explicit model_config keeps its own shape; the rest is still derived
    preset, data, model, run, training = config.parse_args([str(REPO / "configs/small.yaml"), "--model_config",
                                                            "configs/models/gpt2-small.json", "--block_size", "1000"])
    assert model.config_overrides is None and run.global_batch_tokens == 131_000  # 131 whole sequences of 1,000
    assert "the shape of" in capsys.readouterr().out


def test_a_bad_value_beside_the_dial_is_one_paragraph_not_a_traceback():
    # the dial divides by the given block_size: out-of-range values are refused before it runs
    with pytest.raises(config.UserError, match="--block_size must be at least 2"):
        config.parse_args([str(REPO / "configs/small.yaml"), "--train_file", str(DEMO), "--block_size", "0"])


def test_sharded_training_gets_adamw_instead_of_a_refusal(monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # as `accelerate launch` with an FSDP config sets it
    preset, data, model, run, training = config.parse_args([str(REPO / "configs/small.yaml"), "--train_file", str(DEMO)])
    assert run.muon_learning_rate is None and "no Muon: sharded training" in capsys.readouterr().out
    assert training.adam_beta2 == 0.95  # AdamW for everything: 0.95 (the depth-4 AdamW ablation)


def test_beside_muon_adamw_keeps_the_trainers_beta2():
    # what AdamW trains beside Muon (embeddings, norms, biases) did better with 0.999 at depth 2 and 3 (docs/recipe.md)
    preset, data, model, run, training = config.parse_args([str(REPO / "configs/small.yaml"), "--train_file", str(DEMO)])
    assert run.muon_learning_rate and training.adam_beta2 == 0.999
    *_, training = config.parse_args([str(REPO / "configs/small.yaml"), "--train_file", str(DEMO), "--adam_beta2", "0.9"])
    assert training.adam_beta2 == 0.9  # given wins


def test_a_given_accumulation_is_the_batch_given_the_trainers_way(capsys):
    # small.yaml alone: the dial's 131,072 tokens a step; with --gradient_accumulation_steps the batch is
    # per device x accumulation x processes (32 x 2 here), as the Trainer counts it, and nothing derives over it
    *_, run, training = config.parse_args([str(REPO / "configs/small.yaml"), "--train_file", str(DEMO),
                                           "--gradient_accumulation_steps", "2"])
    assert run.global_batch_tokens is None and training.gradient_accumulation_steps == 2
    assert "32 x 2 sequences a step a process" in capsys.readouterr().out
    # the demo preset gives its accumulation (1): 16 sequences of 128 a step, not the dial's 8,192 tokens
    *_, run, training = config.parse_args([str(REPO / "configs/demo.yaml")])
    assert run.global_batch_tokens is None and (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (16, 1)
    assert run.muon_learning_rate == pytest.approx(2.7e-3) and training.lr_scheduler_type == "warmup_stable_decay"


@pytest.mark.slow  # a real run: ~20 s on two cores
def test_a_run_on_the_dial_logs_the_derived_schedule(tmp_path):
    # depth 2 with max_steps 10 given: decay 20% = 2 steps, warmup max(20, 2%) capped at 10 - 2 = 8 steps, learning
    # rate 0.5 x 0.3118 x (6 x 238,272 x 2,859,264)^-0.125 = 4.1e-3. Logged at step s is the rate step s used:
    # s-1 < 8: (s-1)/8 of the peak; step 9 starts the decay at 1 - sqrt(0) = 1; step 10: 1 - sqrt(1/2).
    preset = tmp_path / "d2.yaml"  # only the dial and the run's bookkeeping: everything else derived
    preset.write_text(f"depth: 2\ntrain_file: {DEMO}\nvalidation_split_percentage: 10\n", encoding="utf-8")
    proc = run_pretrain(preset, "--max_steps", 10, "--logging_steps", 1, "--save_steps", 10, "--eval_strategy", "no",
                        "--swanlab_mode", "disabled", "--output_dir", tmp_path / "out", "--cache_dir", tmp_path / "cache", cwd=tmp_path)
    assert proc.returncode == 0, failure(proc.stdout)
    assert "dial: depth 2 -> hidden 64, 2 heads" in proc.stdout and "1,024 tokens per step" in proc.stdout
    logs = [h for h in json.loads((tmp_path / "out" / "checkpoint-10" / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    peak = 4.1e-3
    expected = [peak * k / 8 for k in range(8)] + [peak, peak * (1 - 0.5 ** 0.5)]
    assert [h["learning_rate"] for h in logs] == pytest.approx(expected)
