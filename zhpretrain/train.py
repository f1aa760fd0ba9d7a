"""Assemble the Trainer: arguments, collator, metrics (perplexity, bits per byte, throughput), callbacks, checkpoints."""
import json
import math
import re
import time
import warnings
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, default_data_collator

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class PretrainTrainer(Trainer):
    """A Trainer whose logs also carry perplexity, bits per byte and tokens per second."""

    def __init__(self, *args, bytes_per_token: float, tokens_per_step: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.bytes_per_token, self.tokens_per_step = bytes_per_token, tokens_per_step
        self._clock = None  # (time, global_step) of the last training log

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
        # Restart the clock after every log, so evaluation and checkpoint time do not count as training time.
        self._clock = (time.perf_counter(), step)


class SampleCallback(TrainerCallback):
    """At each evaluation, continue a few fixed prompts and hand the texts to `sink` (SwanLab, the console)."""

    def __init__(self, tokenizer, prompts: list[str], max_new_tokens: int, sink, enabled: bool = True):
        self.tokenizer, self.prompts, self.max_new_tokens, self.sink, self.enabled = tokenizer, prompts, max_new_tokens, sink, enabled

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if self.enabled and state.is_world_process_zero and model is not None and self.prompts:
            self.sink(state.global_step, [generate(model, self.tokenizer, p, self.max_new_tokens) for p in self.prompts])


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


def finished_step(checkpoint: str | None) -> int | None:
    """The step of a checkpoint already at its run's last step (the Trainer would train one step more on resume)."""
    if not checkpoint:
        return None
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return state["global_step"] if 0 < state["max_steps"] <= state["global_step"] else None


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
