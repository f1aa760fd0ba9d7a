"""Assemble the Trainer: arguments, collator, metrics (perplexity, bits per byte, throughput), callbacks, checkpoints."""
import json
import math
import os
import re
import signal
import sys
import time
import warnings
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, default_data_collator

from .errors import UserError

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class PretrainTrainer(Trainer):
    """A Trainer whose logs also carry perplexity, bits per byte and tokens per second."""

    def __init__(self, *args, bytes_per_token: float, tokens_per_step: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.bytes_per_token, self.tokens_per_step = bytes_per_token, tokens_per_step
        self._clock = None  # (time, global_step) of the last training log

    def get_train_dataloader(self):
        from .stream import StreamingBlocks

        if not isinstance(self.train_dataset, StreamingBlocks):
            return super().get_train_dataloader()
        # The stream is already sharded by rank: accelerate's prepare() would shard it a second time and drop half.
        # No workers: the position lives in this process, and the Rust tokenizer uses every core anyway.
        return torch.utils.data.DataLoader(self.train_dataset, batch_size=self._train_batch_size,
                                           collate_fn=self.data_collator, num_workers=0)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # The Trainer would quietly replace a NaN loss in its logs by the running mean; stop before it is saved instead.
        if not torch.isfinite(loss):
            good = last_checkpoint(self.args.output_dir)
            raise UserError(f"The training loss became {loss.item()} at step {self.state.global_step + 1}. Nothing was saved "
                            f"after it; the last good checkpoint is {good or 'none (no checkpoint was written yet)'}. "
                            "Lower --learning_rate or raise --warmup_steps, then run the same command to resume from it.")
        return loss

    def log(self, logs: dict, start_time: float | None = None) -> None:
        now, step = time.perf_counter(), self.state.global_step
        if "eval_loss" in logs:
            loss = logs["eval_loss"]
            logs["eval_perplexity"] = math.exp(min(loss, 50))
            # Nats per token -> bits per UTF-8 byte of the evaluation text: comparable across tokenizers.
            logs["eval_bits_per_byte"] = loss / math.log(2) / self.bytes_per_token
        elif "loss" in logs:
            logs["tokens_seen"] = step * self.tokens_per_step
            if self._clock is not None and step > self._clock[1]:
                logs["tokens_per_second"] = (step - self._clock[1]) * self.tokens_per_step / (now - self._clock[0])
        super().log(logs, start_time)
        # Restart the clock after every log, so evaluation time does not count as training time.
        self._clock = (time.perf_counter(), step)


class SampleCallback(TrainerCallback):
    """At each evaluation, continue a few fixed prompts and hand the texts to `sink` (SwanLab, the console)."""

    def __init__(self, tokenizer, prompts: list[str], max_new_tokens: int, sink, enabled: bool = True):
        self.tokenizer, self.prompts, self.max_new_tokens, self.sink, self.enabled = tokenizer, prompts, max_new_tokens, sink, enabled

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if self.enabled and state.is_world_process_zero and model is not None and self.prompts:
            self.sink(state.global_step, [generate(model, self.tokenizer, p, self.max_new_tokens) for p in self.prompts])


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

    def _anyone_requested(self, args) -> bool:
        # Ranks may get the signal a step apart: agree on it, or one rank would wait forever in the next all-reduce.
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self.requested
        flag = torch.tensor([int(self.requested)], device=args.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def on_step_end(self, args, state, control, **kwargs):
        if self._anyone_requested(args):
            control.should_save, control.should_training_stop = True, True
            self.stopped_at = state.global_step


class FiniteWeights(TrainerCallback):
    """Before a checkpoint is written, make sure the weights are finite: a NaN gradient poisons them a step before the loss."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if control.should_save and model is not None and not all(torch.isfinite(p).all() for p in model.parameters()):
            good = last_checkpoint(args.output_dir)
            raise UserError(f"The weights became NaN or infinite at step {state.global_step}, so no checkpoint was written; "
                            f"the last good checkpoint is {good or 'none (no checkpoint was written yet)'}. Lower --learning_rate, "
                            "raise --warmup_steps or keep --max_grad_norm, then run the same command to resume from it.")


class StreamPosition(TrainerCallback):
    """Write each rank's stream position into a checkpoint before the Trainer writes the rest (and trainer_state.json last)."""

    def __init__(self, dataset, rank: int):
        self.dataset, self.rank = dataset, rank

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            from .stream import save_position

            consumed = state.global_step * args.per_device_train_batch_size * args.gradient_accumulation_steps
            save_position(self.dataset, Path(args.output_dir) / f"checkpoint-{state.global_step}", consumed, self.rank)


class RunShape(TrainerCallback):
    """Record the batch shape in each checkpoint, so a resume with another global batch is refused clearly."""

    NAME = "zhpretrain_shape.json"

    def __init__(self, shape: dict):
        self.shape = shape

    def on_step_end(self, args, state, control, **kwargs):
        # Before the Trainer writes the checkpoint (and trainer_state.json, our "complete" mark, last).
        if control.should_save and state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / self.NAME).write_text(json.dumps(self.shape))

    def check(self, checkpoint: str) -> None:
        path = Path(checkpoint) / self.NAME
        if not path.is_file():
            return
        old = json.loads(path.read_text())
        keys = ("world_size", "per_device_train_batch_size", "gradient_accumulation_steps", "block_size")
        if self.shape.get("streaming") and any(old[k] != self.shape[k] for k in keys):
            raise UserError(f"{checkpoint} was written by a streaming run with " + ", ".join(f"{k}={old[k]}" for k in keys) +
                            "; each rank's stream position depends on all of them. Resume with the same values, "
                            "or start a new --output_dir.")
        # The data order and the schedule continue exactly when the global batch (sequences and their length) is the same,
        # however it is split over processes, per-device batches and accumulation.
        if (old["sequences_per_step"], old["block_size"]) != (self.shape["sequences_per_step"], self.shape["block_size"]):
            describe = lambda s: (f"{s['world_size']} processes x {s['per_device_train_batch_size']} per device x "  # noqa: E731
                                  f"{s['gradient_accumulation_steps']} accumulation = {s['sequences_per_step']} sequences of {s['block_size']} tokens")
            raise UserError(f"{checkpoint} was written with {describe(old)} per step; this run has {describe(self.shape)}. "
                            "Resume with the same global batch (change --per_device_train_batch_size or "
                            "--gradient_accumulation_steps to match) and block_size, or start a new --output_dir.")


@torch.no_grad()
def generate(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Sample a continuation with a fixed seed, leaving the training RNG untouched (so resumed runs stay exact)."""
    was_training = model.training
    model.eval()
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=True, top_k=50, temperature=0.8,
                             repetition_penalty=1.1, pad_token_id=tokenizer.pad_token_id)
    model.train(was_training)
    return tokenizer.decode(out[0], skip_special_tokens=True)


def sharded(args) -> bool:
    """FSDP or DeepSpeed, from the arguments or from an accelerate config: weights are split, so no rank-0-only generate."""
    env = any(os.environ.get(v, "false").lower() == "true" for v in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"))
    return bool(args.fsdp or args.deepspeed or env)


def last_checkpoint(output_dir: str) -> str | None:
    """The newest checkpoint whose trainer_state.json (the Trainer writes it last) is complete; older ones are skipped."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT.match(p.name)) and p.is_dir())
    for step, path in reversed(found):
        try:
            json.loads((path / "trainer_state.json").read_text())
            return str(path)
        except (OSError, ValueError):
            warnings.warn(f"{path} is incomplete (the run died while writing it); skipping it.", stacklevel=1)
    return None


def finished_step(checkpoint: str | None, max_steps: int) -> int | None:
    """The step of a checkpoint already at this run's last step (the Trainer would train one step more on resume)."""
    if not checkpoint:
        return None
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    last = max_steps if max_steps > 0 else state["max_steps"]  # epoch-based runs: the total the Trainer computed then
    return state["global_step"] if 0 < last <= state["global_step"] else None


def build_trainer(model, training_args, data: dict, tokenizer, callbacks: list, bytes_per_token: float, tokens_per_step: int):
    return PretrainTrainer(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data["test"],
        processing_class=tokenizer,
        data_collator=default_data_collator,
        callbacks=callbacks,
        bytes_per_token=bytes_per_token,
        tokens_per_step=tokens_per_step,
    )


def tidy_final(folder: Path) -> None:
    """final/ holds what a user loads: drop the Trainer's pickled training_args.bin (loading it means unpickling, and
    the arguments are in the SwanLab config anyway), and give files the permissions of any file the user creates
    (safetensors writes its file 0600)."""
    (folder / "training_args.bin").unlink(missing_ok=True)
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)
