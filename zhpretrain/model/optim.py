"""--muon_learning_rate: Muon for the hidden weight matrices, the --optim optimizer (AdamW) for every other parameter.

Why: Muon (momentum orthogonalised by Newton-Schulz) trains the 2-D matrices inside the transformer blocks with fewer
tokens than AdamW for the same loss (Keller Jordan's NanoGPT speedrun; Moonshot's "Muon is Scalable for LLM Training"),
but it only applies to such matrices: embeddings, the output layer, norms and biases stay with AdamW. The Trainer steps,
schedules, clips, scales and checkpoints one optimizer, so the two are wrapped into one torch Optimizer whose param_groups
are theirs: the Trainer's lr scheduler multiplies every group's initial lr by the same factor, so both follow the same
warmup and decay, each from its own peak (--learning_rate for AdamW, --muon_learning_rate for Muon).

torch.optim.Muon's lr adjustment is "match_rms_adamw" (Moonshot): the update of every matrix has the RMS an AdamW update
would have, so --muon_learning_rate is on AdamW's scale (start from --learning_rate's value) and --weight_decay means
the same for both."""
import torch
from torch import nn

from ..errors import UserError
from ..run.launch import sharded

MUON_ADJUST_LR = "match_rms_adamw"

try:  # torch >= 2.9; older ones get AdamW from the dial, or a refusal of --muon_learning_rate
    from torch.optim import _muon
except ImportError:
    _muon = None
_TORCH_NEWTON_SCHULZ = getattr(_muon, "_zeropower_via_newtonschulz", None)


def newton_schulz_float32(grad: torch.Tensor, ns_coefficients, ns_steps: int, eps: float) -> torch.Tensor:
    """torch.optim.Muon's Newton-Schulz iteration (the same quintic, steps and scaling) in float32 instead of bfloat16.

    Why: bfloat16 is right on a GPU, but a CPU without bf16 matrix units (AVX2 only, as the 2-core test machine)
    emulates it: one 384x128 iteration took 44 ms in bfloat16 and 2.2 ms in float32 (2 threads, 2026-12-01), and
    cProfile of the cpu-speedrun preset put 1.0 s of its 1.4 s step in Muon."""
    a, b, c = ns_coefficients
    tall = grad.size(0) > grad.size(1)
    x = grad.float().T if tall else grad.float()
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def _newton_schulz(grad, ns_coefficients, ns_steps, eps):
    if grad.device.type == "cpu":
        return newton_schulz_float32(grad, ns_coefficients, ns_steps, eps)
    return _TORCH_NEWTON_SCHULZ(grad, ns_coefficients, ns_steps, eps)


class Muon(getattr(torch.optim, "Muon", torch.optim.Optimizer)):
    """torch.optim.Muon, its Newton-Schulz iteration in float32 on a CPU (newton_schulz_float32 says why); on a GPU
    it is torch's own, in bfloat16. The state and the update are torch's: only the iteration's dtype differs."""

    def step(self, closure=None):
        if _TORCH_NEWTON_SCHULZ is None:  # a torch that no longer has it: its own iteration, slow on a CPU but right
            return super().step(closure)
        _muon._zeropower_via_newtonschulz = _newton_schulz
        try:
            return super().step(closure)
        finally:
            _muon._zeropower_via_newtonschulz = _TORCH_NEWTON_SCHULZ


def split_parameters(model: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """(hidden matrices for Muon, the rest for AdamW), as (name, parameter) pairs of the trainable parameters.

    A hidden matrix is a 2-D parameter that is neither an embedding table (any nn.Embedding: tokens, and learned
    positions such as GPT-2's) nor the output layer's weight (tied to the token embedding or not). Tied weights are
    listed once (named_parameters drops repeats)."""
    outside = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    outside |= {id(p) for p in head.parameters()} if head is not None else set()
    hidden, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (hidden if p.ndim == 2 and id(p) not in outside else rest).append((name, p))
    return hidden, rest


class MuonWithAdamW(torch.optim.Optimizer):
    """Two optimizers stepped, zeroed, saved and loaded as one.

    param_groups are the two optimizers' own group dicts, AdamW's first (the Trainer logs the first group's lr as
    learning_rate): a scheduler or a grad scaler that changes or reads a group reaches the optimizer that uses it.
    state_dict() is {"adamw": ..., "muon": ...}."""

    def __init__(self, adamw: torch.optim.Optimizer, muon: torch.optim.Optimizer):
        self.adamw, self.muon = adamw, muon
        super().__init__([*adamw.param_groups, *muon.param_groups], {})  # the same dicts; checks no parameter is in both

    @property
    def state(self) -> dict:
        """Both optimizers' per-parameter state (a merged view, for reading)."""
        return {**self.adamw.state, **self.muon.state}

    @state.setter
    def state(self, value) -> None:  # Optimizer.__init__ sets an empty one: the state lives in the two optimizers
        pass

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.adamw.step()
        self.muon.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.adamw.zero_grad(set_to_none=set_to_none)
        self.muon.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"adamw": self.adamw.state_dict(), "muon": self.muon.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if not isinstance(state_dict, dict) or set(state_dict) != {"adamw", "muon"}:
            raise UserError("The checkpoint's optimizer state was written without --muon_learning_rate, and this run uses "
                            "Muon. Resume with the optimizer settings of the run that wrote it, or start a new --output_dir.")
        self.adamw.load_state_dict(state_dict["adamw"])
        self.muon.load_state_dict(state_dict["muon"])
        # torch's load_state_dict gives each optimizer new group dicts: point ours at them again, or the lr scheduler
        # would go on changing the old ones (accelerate round-trips the state once in prepare(), so this always runs).
        self.param_groups = [*self.adamw.param_groups, *self.muon.param_groups]


def create_optimizer(model: nn.Module, training_args, muon_learning_rate: float,
                     embedding_learning_rate: float | None = None) -> MuonWithAdamW:
    """Muon (lr muon_learning_rate, --weight_decay) for the hidden matrices; for the rest the optimizer --optim names
    (AdamW by default, with --learning_rate, --adam_beta1/2, --adam_epsilon), with the Trainer's own weight decay rule
    (none for biases and norms); the token embedding table (tied: the output layer too) at embedding_learning_rate
    when given."""
    from transformers import Trainer
    from transformers.trainer_optimizer import is_optimizer_factory

    if sharded(training_args):
        raise UserError("--muon_learning_rate does not work with FSDP or DeepSpeed: Muon orthogonalises whole matrices, "
                        "and those shard them. Use DDP (the default with several GPUs), or leave Muon off.")
    hidden, rest = split_parameters(model)
    if not hidden:
        raise UserError("--muon_learning_rate: this model has no hidden weight matrices for Muon.")
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(training_args, model)
    if is_optimizer_factory(cls) or {"params", "model", "optimizer_dict"} & set(kwargs):
        raise UserError(f"--muon_learning_rate needs a plain --optim for the other parameters (such as adamw_torch), "
                        f"not {training_args.optim}.")
    decay = set(Trainer.get_decay_parameter_names(None, model))  # the Trainer's rule: no decay for biases and norms
    table = {id(p) for p in model.get_input_embeddings().parameters()} if embedding_learning_rate else set()
    groups = [{"params": [p for n, p in rest if n in decay and id(p) not in table], "weight_decay": training_args.weight_decay},
              {"params": [p for n, p in rest if n not in decay and id(p) not in table], "weight_decay": 0.0},
              {"params": [p for n, p in rest if id(p) in table], "lr": embedding_learning_rate,
               "weight_decay": training_args.weight_decay}]
    adamw = cls([g for g in groups if g["params"]], **kwargs)
    muon = Muon([p for _, p in hidden], lr=muon_learning_rate, weight_decay=training_args.weight_decay,
                            adjust_lr_fn=MUON_ADJUST_LR)
    return MuonWithAdamW(adamw, muon)
