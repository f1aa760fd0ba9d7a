"""--muon_learning_rate: Muon for the hidden matrices, AdamW for the rest, stepped, scheduled and checkpointed as one."""
import copy

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, TrainingArguments, get_scheduler, set_seed

from conftest import REPO
from zhpretrain.model import optim
from zhpretrain.run import resume
from zhpretrain.config import DataArguments, ModelArguments, RunArguments
from zhpretrain.errors import UserError

LR, MUON_LR = 2e-3, 4e-3


def _model(**overrides):
    set_seed(0)
    config = AutoConfig.from_pretrained(REPO / "configs" / "models" / "qwen2-demo.json")
    config.update(overrides)
    return AutoModelForCausalLM.from_config(config)


def _args(tmp_path, **kw):
    return TrainingArguments(output_dir=str(tmp_path), learning_rate=LR, use_cpu=True, report_to=[], **{"weight_decay": 0.1, **kw})


def _batch(seed=0):
    ids = torch.randint(0, 4096, (4, 32), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "labels": ids}


def _step(model, opt, batch):
    opt.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    opt.step()
    return loss.item()


def test_hidden_matrices_go_to_muon_and_embeddings_head_norms_biases_to_adamw():
    layers = range(4)  # qwen2-demo.json: 4 layers, tied embeddings, q/k/v biases
    hidden = {f"model.layers.{i}.{m}.weight" for i in layers for m in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    rest = {"model.embed_tokens.weight", "model.norm.weight"} | {f"model.layers.{i}.{m}" for i in layers for m in (
        "self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias", "input_layernorm.weight",
        "post_attention_layernorm.weight")}
    muon, adamw = optim.split_parameters(_model())
    assert {n for n, _ in muon} == hidden and {n for n, _ in adamw} == rest
    muon, adamw = optim.split_parameters(_model(tie_word_embeddings=False))
    assert {n for n, _ in muon} == hidden and {n for n, _ in adamw} == rest | {"lm_head.weight"}


def test_the_optimizers_get_those_parameters_with_the_trainers_weight_decay_rule(tmp_path):
    model = _model()
    opt = optim.create_optimizer(model, _args(tmp_path), MUON_LR)
    assert isinstance(opt.muon, torch.optim.Muon) and isinstance(opt.adamw, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for g in opt.muon.param_groups for p in g["params"]}
    assert muon == {n for n, _ in optim.split_parameters(model)[0]}
    decayed = {names[id(p)] for g in opt.adamw.param_groups if g["weight_decay"] == 0.1 for p in g["params"]}
    assert decayed == {"model.embed_tokens.weight"}  # biases and norms: no decay
    assert opt.param_groups[0]["lr"] == LR and opt.param_groups[-1]["lr"] == MUON_LR  # AdamW's first: the logged lr


@pytest.mark.parametrize("tied", [True, False])
def test_the_embedding_table_steps_at_its_own_rate(tmp_path, tied):
    # Adam's first step moves every weight with a gradient by lr x g / (|g| + eps), about lr in size, whatever the
    # gradient's scale (plus lr x weight_decay x w, off here): the largest change of each tensor is its learning rate.
    model = _model(tie_word_embeddings=tied)
    opt = optim.create_optimizer(model, _args(tmp_path, weight_decay=0.0), MUON_LR, embedding_learning_rate=10 * LR)
    table, head, norm = model.model.embed_tokens.weight, model.lm_head.weight, model.model.norm.weight
    before = [t.detach().clone() for t in (table, head, norm)]
    _step(model, opt, _batch())
    moved = [(t.detach() - b).abs().max().item() for t, b in zip((table, head, norm), before)]
    assert moved[0] == pytest.approx(10 * LR, rel=1e-3) and moved[2] == pytest.approx(LR, rel=1e-3)
    assert moved[1] == pytest.approx(10 * LR if tied else LR, rel=1e-3)  # tied: the output layer is the same matrix
    assert opt.param_groups[0]["lr"] == LR  # the logged learning_rate stays --learning_rate
    counted = [p for g in opt.param_groups for p in g["params"]]
    assert len(counted) == len({id(p) for p in counted}) == len(list(model.parameters()))  # each parameter once


def test_an_embedding_rate_without_muon_is_refused_in_one_paragraph():
    from zhpretrain import config

    with pytest.raises(UserError) as e:
        config.parse_args([str(REPO / "configs/demo.yaml"), "--depth", "0", "--embedding_learning_rate", "0.01"])
    assert "--embedding_learning_rate works beside Muon" in str(e.value) and "--muon_learning_rate" in str(e.value)


def test_muon_gives_the_hidden_matrices_an_orthogonalised_update(tmp_path):
    flatness = {}
    for muon in (True, False):
        model = _model()
        opt = (optim.create_optimizer(model, _args(tmp_path, weight_decay=0.0), MUON_LR) if muon
               else torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0))
        weight = model.model.layers[1].self_attn.q_proj.weight
        before = weight.detach().clone()
        _step(model, opt, _batch())
        s = torch.linalg.svdvals(weight.detach() - before)  # 128 singular values, largest first
        flatness[muon] = (s[64] / s[0]).item()
    assert flatness[True] > 0.6 and flatness[False] < 0.4, flatness  # measured: 0.70 (Muon), 0.19 (AdamW)


@pytest.mark.slow  # over 8 s on 2 quiet cores: `make test` stays under 5 minutes; CI runs it
def test_a_few_steps_reduce_the_loss(tmp_path):
    model = _model()
    opt = optim.create_optimizer(model, _args(tmp_path), MUON_LR)
    losses = [_step(model, opt, _batch()) for _ in range(8)]
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.slow  # over 8 s on 2 quiet cores: `make test` stays under 5 minutes; CI runs it
def test_state_dict_round_trip_resumes_exactly(tmp_path):
    model = _model()
    opt = optim.create_optimizer(model, _args(tmp_path), MUON_LR)
    for seed in (1, 2):
        _step(model, opt, _batch(seed))
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")  # as the Trainer saves and loads a checkpoint's optimizer
    state = torch.load(tmp_path / "optimizer.pt", weights_only=True)
    resumed, fresh = copy.deepcopy(model), copy.deepcopy(model)
    resumed_opt = optim.create_optimizer(resumed, _args(tmp_path), MUON_LR)
    resumed_opt.load_state_dict(state)
    fresh_opt = optim.create_optimizer(fresh, _args(tmp_path), MUON_LR)  # no state: momentum and moments start again
    for seed in (3, 4):
        for m, o in ((model, opt), (resumed, resumed_opt), (fresh, fresh_opt)):
            _step(m, o, _batch(seed))
    weights = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])  # noqa: E731
    assert torch.equal(weights(model), weights(resumed))
    assert not torch.equal(weights(model), weights(fresh))
    with pytest.raises(UserError, match="written without --muon_learning_rate"):
        resumed_opt.load_state_dict(torch.optim.AdamW(model.parameters()).state_dict())


def test_the_lr_schedule_scales_both_optimizers_also_after_a_state_round_trip(tmp_path):
    opt = optim.create_optimizer(_model(), _args(tmp_path), MUON_LR)
    scheduler = get_scheduler("linear", opt, num_warmup_steps=4, num_training_steps=20)
    opt.load_state_dict(opt.state_dict())  # accelerate's prepare() does this after the scheduler exists; so does a resume
    for step, factor in ((1, 0.25), (2, 0.5), (4, 1.0), (12, 0.5)):
        while scheduler.last_epoch < step:
            opt.step()
            scheduler.step()
        assert [g["lr"] for g in opt.adamw.param_groups] == pytest.approx([LR * factor] * 2)  # decayed and not decayed
        assert [g["lr"] for g in opt.muon.param_groups] == pytest.approx([MUON_LR * factor])


def test_the_trainer_hook_uses_muon_only_when_asked_and_schedules_it(tmp_path):
    from zhpretrain.train import trainer as train

    samples = [{"input_ids": ids, "labels": ids} for ids in _batch()["input_ids"]]

    def trainer(muon):
        args = _args(tmp_path, max_steps=3, warmup_steps=4, lr_scheduler_type="constant_with_warmup", per_device_train_batch_size=2,
                     save_strategy="no", logging_strategy="no", disable_tqdm=True)
        return train.PretrainTrainer(model=_model(), args=args, train_dataset=samples, bytes_per_token=1.0, tokens_per_step=64,
                                     muon_learning_rate=muon)
    without = trainer(None)
    without.create_optimizer_and_scheduler(num_training_steps=3)
    assert type(without.optimizer) is torch.optim.AdamW
    with_muon = trainer(MUON_LR)
    with_muon.train()  # through accelerate's prepare(), which round-trips the optimizer's state once
    opt = with_muon.optimizer.optimizer
    assert isinstance(opt, optim.MuonWithAdamW) and opt.muon.state  # Muon stepped: it holds momentum
    factor = 3 / 4  # 3 steps into a 4-step warmup
    used = [g["lr"] for o in (opt.adamw, opt.muon) for g in o.param_groups]  # the lrs the two optimizers step with
    assert used == pytest.approx([LR * factor] * 2 + [MUON_LR * factor])
    assert with_muon.lr_scheduler.get_last_lr() == pytest.approx([LR * factor] * 2 + [MUON_LR * factor])


def test_muon_enters_the_run_identity_only_when_set():
    assert resume.recipe_identity(DataArguments(), RunArguments(), ModelArguments()) == {}  # runs started before the option existed still resume
    changed = resume.recipe_identity(DataArguments(), RunArguments(muon_learning_rate=0.02), ModelArguments())
    assert changed == {"muon_learning_rate": 0.02}
    assert resume.changes({"training": {"learning_rate": LR}}, {"training": {"learning_rate": LR, **changed}})


def _reference_muon_step(weight, grads, lr, weight_decay):
    """Muon written out in float64 from its papers (Keller Jordan's post: Nesterov momentum 0.95, the quintic
    3.4445, -4.7750, 2.0315 five times on the Frobenius-normalised matrix; Moonshot's RMS match: lr x 0.2 x
    sqrt(max(rows, cols)); decoupled weight decay), for each gradient in turn."""
    w, buf = weight.double().clone(), torch.zeros_like(weight, dtype=torch.float64)
    for g in grads:
        g = g.double()
        buf = 0.95 * buf + 0.05 * g
        u = 0.05 * g + 0.95 * buf  # Nesterov: g.lerp(buf, 0.95)
        x = u.T if u.shape[0] > u.shape[1] else u
        x = x / x.norm()
        for _ in range(5):
            a = x @ x.T
            x = 3.4445 * x + (-4.7750 * a + 2.0315 * a @ a) @ x
        u = x.T if u.shape[0] > u.shape[1] else x
        w = w * (1 - lr * weight_decay) - lr * 0.2 * max(w.shape) ** 0.5 * u
    return w


@pytest.mark.parametrize("shape", [(96, 32), (32, 96), (48, 48)])
def test_muon_on_a_cpu_is_muon_in_float32(shape):
    # torch's own iteration runs in bfloat16 (relative error ~1e-2, and emulated on an AVX2 CPU: 20x slower); ours
    # must match a float64 Muon to float32 precision over several steps.
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    grads = [torch.randn(shape, generator=torch.Generator().manual_seed(2 + i)) for i in range(3)]
    p = torch.nn.Parameter(weight.clone())
    opt = optim.Muon([p], lr=0.01, weight_decay=0.1, adjust_lr_fn=optim.MUON_ADJUST_LR)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    expected = _reference_muon_step(weight, grads, 0.01, 0.1)
    moved = (expected - weight.double()).abs().max()
    assert (p.detach().double() - expected).abs().max() < 1e-4 * moved  # torch's bfloat16 iteration: ~1e-2 of it
    assert isinstance(opt, torch.optim.Muon)
