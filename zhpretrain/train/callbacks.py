"""The callbacks that watch training: samples at each evaluation, a graceful stop on Ctrl-C or SIGTERM, and the guard
that all ranks agree on before they go on (a stop, a NaN, too little disk)."""
import os
import signal
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

from ..errors import UserError
from ..model.sampling import sample
from ..run import checkpoint, folder


class SampleCallback(TrainerCallback):
    """At each evaluation, continue a few fixed prompts and hand the texts to `sink` (SwanLab, the console)."""

    def __init__(self, tokenizer, prompts: list[str], max_new_tokens: int, sink, enabled: bool = True):
        self.tokenizer, self.prompts, self.max_new_tokens, self.sink, self.enabled = tokenizer, prompts, max_new_tokens, sink, enabled

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if self.enabled and state.is_world_process_zero and model is not None and self.prompts:
            self.sink(state.global_step, [sample(model, self.tokenizer, p, self.max_new_tokens) for p in self.prompts])


class GracefulStop(TrainerCallback):
    """Ctrl-C or SIGTERM while training: checkpoint at the end of the current step and stop, on every rank at the same
    step. Before or after training the first one interrupts at once (caches are written atomically). A second Ctrl-C
    always exits at once. SIGTERM never counts as a second one: torchrun forwards one after the terminal's SIGINT."""

    def __init__(self):
        self.requested, self.interrupts, self.stopped_at, self.training = False, 0, None, False

    def install(self) -> None:
        """(Re)take SIGINT and SIGTERM: called at start-up, and again before training, since swanlab.init sets its own."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:
                print("\nsecond Ctrl-C: exiting now, without saving", file=sys.stderr, flush=True)
                os._exit(130)
        if not self.training:
            self.interrupts = max(self.interrupts, 1)
            raise KeyboardInterrupt
        if not self.requested:
            print("\nstopping: saving a checkpoint at the end of this step (Ctrl-C again exits at once)", file=sys.stderr, flush=True)
        self.requested = True


class Guard(TrainerCallback):
    """At every logging and saving step, all ranks agree (one all-reduce) on: a stop request (Ctrl-C, SIGTERM), a
    non-finite loss since the last check, and, before a checkpoint is written, non-finite weights and too little disk.

    Agreeing matters: under FSDP or ZeRO a rank that raised alone would leave the others waiting forever inside the
    collective save. Checking only at those steps keeps the host from waiting on the device every step; the cost is that
    a stop or a NaN loss is acted on at the next logging step (at most logging_steps later; one process stops at once).
    No checkpoint is ever written with non-finite weights: those are checked before every save."""

    def __init__(self, stop: "GracefulStop", parameters: int):
        self.stop, self.parameters, self.trainer, self.checked = stop, parameters, None, 0

    def on_step_end(self, args, state, control, model=None, **kwargs):
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        due = control.should_log or control.should_save or control.should_evaluate or control.should_training_stop
        if not due and (distributed or not self.stop.requested):
            return
        losses = self.trainer.nonfinite_losses if self.trainer.nonfinite_losses is not None else 0
        stop, nan_loss = _agree([self.stop.requested, losses], args.device)
        first, self.checked = self.checked + 1, state.global_step
        if nan_loss:
            when = f"at step {state.global_step}" if first == state.global_step else f"between steps {first} and {state.global_step}"
            raise UserError(f"The training loss became NaN or infinite {when}. " + _last_good(args, state))
        if stop:
            control.should_save, control.should_training_stop = True, True
            self.stop.stopped_at = state.global_step
        if control.should_save:
            bad_weights, low_space = _agree([not _finite(model), state.is_world_process_zero and _low_space(args, self.parameters)],
                                            args.device)
            if bad_weights:
                raise UserError(f"The weights became NaN or infinite at step {state.global_step}, so no checkpoint was written. "
                                + _last_good(args, state))
            if low_space:
                raise UserError(f"Not enough disk space to write checkpoint-{state.global_step}: "
                                f"{folder.space_problem(Path(args.output_dir), folder.checkpoint_bytes(self.parameters), 'a checkpoint')}. "
                                f"Nothing was written; {_newest(args)}. Free some space (or lower --save_total_limit), "
                                "then run the same command to continue.")


def _agree(flags: list, device) -> list[bool]:
    """Each flag set on any rank (a logical OR across ranks): one all-reduce, one read back to the host."""
    t = torch.stack([torch.as_tensor(f, device=device).reshape(()).int() for f in flags])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def _finite(model) -> torch.Tensor:
    """Whether this rank's weights are finite: its own shard under FSDP (DTensor) and ZeRO-3 (ds_tensor), not placeholders."""
    if model is None:
        return torch.tensor(True)
    shards = [getattr(p, "ds_tensor", p) for p in model.parameters()]
    shards = [s.to_local() if hasattr(s, "to_local") else s for s in shards]
    return torch.stack([torch.isfinite(s).all() for s in shards if s.numel()]).all()


def _low_space(args, parameters: int) -> bool:
    return folder.space_problem(Path(args.output_dir), folder.checkpoint_bytes(parameters), "a checkpoint") is not None


def _newest(args) -> str:
    good = checkpoint.last_checkpoint(args.output_dir, move_aside=False)
    return f"the newest complete checkpoint is {good}" if good else "no checkpoint was written yet"


def _last_good(args, state) -> str:
    return (f"Nothing was saved after it; {_newest(args)}. Lower --learning_rate, raise --warmup_steps or keep "
            "--max_grad_norm, then run the same command to resume.")
