"""The Trainer of a pretraining run: its metrics (perplexity, bits per byte, tokens per second, MFU), its clock, the
side files it writes into each checkpoint, the global batch, and how it is assembled and run."""
import math
from pathlib import Path

import torch
from transformers import Trainer

from ..data import blocks
from ..errors import UserError
from ..data.stream import StreamingBlocks
from ..model import attention, optim
from ..report import console
from ..run import checkpoint, folder
from ..run.launch import sharded
from . import budget, callbacks, speed
from .clock import Clock


class PretrainTrainer(Trainer):
    """A Trainer whose logs also carry perplexity, bits per byte and tokens per second."""

    def __init__(self, *args, bytes_per_token: float, tokens_per_step: int, flops_per_token: float = 0.0,
                 peak_flops: float | None = None, muon_learning_rate: float | None = None,
                 embedding_learning_rate: float | None = None, side_files=(),
                 eval_subset: tuple | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.muon_learning_rate, self.embedding_learning_rate = muon_learning_rate, embedding_learning_rate
        self.bytes_per_token, self.tokens_per_step = bytes_per_token, tokens_per_step  # bytes per token: the eval split's
        # (dataset, its bytes per token): the first eval_subset_samples blocks of eval_dataset, evaluated during training
        # (evaluate); None: the whole split every time.
        self.eval_subset = eval_subset
        self._evaluating = (0, bytes_per_token)  # (blocks, bytes per token) of the evaluation under way, for log()
        self.pending_manifest = None  # rank 0: the checkpoint.PendingManifest of the newest checkpoint
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops  # peak: one device
        self.clock = Clock()
        self.nonfinite_losses = None  # a device tensor: non-finite micro-batch losses since the start
        self.budget = None  # a budget.TimeBudget (attach sets it); with max_train_minutes its schedule replaces lr_scheduler_type
        # Functions step -> {file name: JSON value} of this process's side files (checkpoint.py), written into each checkpoint.
        self.side_files = list(side_files)

    def get_train_dataloader(self):
        if not isinstance(self.train_dataset, StreamingBlocks):
            return super().get_train_dataloader()
        # The stream is already sharded by rank: accelerate's prepare() would shard it a second time and drop half.
        # No workers: the position lives in this process, and the Rust tokenizer uses every core anyway.
        return torch.utils.data.DataLoader(self.train_dataset, batch_size=self._train_batch_size,
                                           collate_fn=self.data_collator, num_workers=0)

    def create_optimizer(self, model=None):  # Muon for the hidden matrices, when asked (optim.py)
        if self.muon_learning_rate is not None and self.optimizer is None:
            self.optimizer = optim.create_optimizer(self.model if model is None else model, self.args, self.muon_learning_rate,
                                                    self.embedding_learning_rate)
        return super().create_optimizer(model)

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.clock.start(self.state.global_step)  # once: a resumed run's rate is its own
        loss = super().training_step(model, inputs, num_items_in_batch)
        # Counted on the device and read only at logging and saving steps (Guard): reading it here would make the host
        # wait for the device every micro-step. The Trainer would quietly replace a NaN loss in its logs by the running mean.
        bad = (~torch.isfinite(loss.detach())).sum()
        self.nonfinite_losses = bad if self.nonfinite_losses is None else self.nonfinite_losses + bad
        return loss

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """The checkpoint brings the optimizer's state (its moments, its step count) and the scheduler's step; the settings
        are this run's. torch restores the saved ones with the state, so a learning rate, weight decay, beta or epsilon
        changed under --allow_resume_changes would be announced and not used: put this run's back."""
        fresh = [{k: v for k, v in g.items() if k not in ("params", "lr", "initial_lr")} for g in self.optimizer.param_groups]
        schedule = getattr(self.lr_scheduler, "scheduler", self.lr_scheduler)
        base = list(getattr(schedule, "base_lrs", []))
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None or self.is_deepspeed_enabled:
            return
        for group, settings in zip(self.optimizer.param_groups, fresh):
            group.update(settings)
        if base and list(schedule.base_lrs) != base:  # the schedule's factor at this step stays; its peak is this run's
            for group, old, new in zip(self.optimizer.param_groups, schedule.base_lrs, base):
                group["lr"], group["initial_lr"] = group["lr"] * new / old if old else new, new
            schedule.base_lrs = base
            schedule._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def floating_point_ops(self, inputs) -> int:
        """The Trainer's total_flos: our FLOPs per token (speed.flops_per_token, computed once) times the tokens. The
        Trainer's own count walks every parameter on every micro-step."""
        return int(self.flops_per_token * inputs["input_ids"].numel())

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None and self.budget is not None and self.budget.minutes:  # see budget.py
            self.lr_scheduler = self.budget.make_scheduler(optimizer or self.optimizer, self.args.get_warmup_steps(num_training_steps))
            self._created_lr_scheduler = True  # as the Trainer marks its own: a second train() call makes a new one
        return super().create_scheduler(num_training_steps, optimizer)

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:  # however training ends (done, Ctrl-C, an error), the last checkpoint gets its manifest
            with self.clock.paused("saving"):
                self.wait_for_manifest()

    def _save_checkpoint(self, model, trial):
        """Our side files first, then the Trainer's files (trainer_state.json, the mark of a complete checkpoint, last);
        then, once every rank's files are in, rank 0 hashes them all into the manifest in a background thread while
        training goes on (checkpoint.PendingManifest): the digests of a GB checkpoint took as long as writing it, with
        every other rank waiting at a barrier. The writing counts as saving on every rank: the ranks wait for rank 0
        inside the pause (the barrier), not in their next step's all-reduce, where the wait would count as training time
        and eat the budget of a multi-process run."""
        target = Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}"
        with self.clock.paused("saving"):
            self.wait_for_manifest()  # the previous checkpoint's: the Trainer's rotation below may delete what it reads
            try:
                checkpoint.write_side_files(target, {k: v for files in self.side_files for k, v in files(self.state.global_step).items()})
                super()._save_checkpoint(model, trial)
                self.accelerator.wait_for_everyone()
            except Exception as e:  # see folder.save_error: torch reports a full disk as a RuntimeError
                raise folder.save_error(target, e) from None
        if self.is_world_process_zero():
            self.pending_manifest = checkpoint.PendingManifest(target)

    def wait_for_manifest(self) -> None:
        """Until the newest checkpoint's manifest is written (rank 0; at once elsewhere and when none is pending)."""
        pending, self.pending_manifest = self.pending_manifest, None
        if pending is not None:
            try:
                pending.wait()
            except Exception as e:
                raise folder.save_error(pending.checkpoint, e) from None

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """During training, on eval_subset when there is one; at its last step, after it, and given a dataset, on the
        whole split: final/ and the model card report the evaluation logged at the last step (run/final.py)."""
        if eval_dataset is None and self.is_in_train and self.eval_subset is not None and not self.control.should_training_stop:
            eval_dataset, bytes_per_token = self.eval_subset
        else:
            eval_dataset, bytes_per_token = self.eval_dataset if eval_dataset is None else eval_dataset, self.bytes_per_token
        self._evaluating = (len(eval_dataset), bytes_per_token)
        with self.clock.paused("evaluation"):  # the sample callbacks (rank 0 only) run inside it too: every rank waits here
            metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            self.accelerator.wait_for_everyone()
            return metrics

    def log(self, logs: dict, start_time: float | None = None) -> None:
        step = self.state.global_step
        if "eval_loss" in logs:
            loss, (logs["eval_samples"], bytes_per_token) = logs["eval_loss"], self._evaluating  # samples: blocks evaluated
            logs["eval_perplexity"] = math.exp(min(loss, 50))
            # Nats per token -> bits per UTF-8 byte of the evaluation text: comparable across tokenizers.
            logs["eval_bits_per_byte"] = loss / math.log(2) / bytes_per_token
        elif "loss" in logs:
            logs["tokens_seen"] = step * self.tokens_per_step
            if (steps_per_second := self.clock.rate(step)) is not None:
                logs["tokens_per_second"] = rate = steps_per_second * self.tokens_per_step
                if (mfu := speed.mfu(self.flops_per_token, rate, self.peak_flops, self.args.world_size)) is not None:
                    logs["mfu"] = mfu
        super().log(logs, start_time)


def global_batch(training_args, block_size: int, streaming: bool, global_batch_tokens: int | None = None) -> dict:
    """The batch of one optimizer step (recorded in each checkpoint: resume.check_shape).

    With global_batch_tokens, the step's sequences are fixed and split over the processes as nanoGPT does: each rank
    takes sequences / world of them in micro-batches of at most per_device_train_batch_size (the largest such size
    that divides its share), and gradient_accumulation_steps is what is left. So the same preset trains the same
    schedule, step by step, on any number of GPUs, and a resume under another world size continues it."""
    world = training_args.world_size
    lowered = None
    if global_batch_tokens:
        sequences, rest = divmod(global_batch_tokens, block_size)
        if rest or sequences % world:
            raise UserError(f"global_batch_tokens {global_batch_tokens:,} is not a whole number of sequences of block_size "
                            f"{block_size} for each of the {world} processes. Give a multiple of {block_size * world:,} "
                            f"(block_size x processes), e.g. {max(1, round(global_batch_tokens / (block_size * world))) * block_size * world:,}.")
        share, micro = sequences // world, training_args.per_device_train_batch_size
        micro = max(m for m in range(1, min(micro, share) + 1) if share % m == 0)
        if micro != training_args.per_device_train_batch_size:
            lowered = training_args.per_device_train_batch_size
        training_args.per_device_train_batch_size, training_args.gradient_accumulation_steps = micro, share // micro
    sequences = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * world
    print(f"global batch: {training_args.per_device_train_batch_size} per device x {training_args.gradient_accumulation_steps} "
          f"accumulation x {world} processes = {sequences} sequences = {sequences * block_size:,} tokens per step" +
          (" (global_batch_tokens: the same on any number of processes" +
           (f"; per_device_train_batch_size lowered from {lowered} to divide each process's share)" if lowered else ")")
           if global_batch_tokens else ""), flush=True)
    return {"world_size": world, "per_device_train_batch_size": training_args.per_device_train_batch_size,
            "gradient_accumulation_steps": training_args.gradient_accumulation_steps, "sequences_per_step": sequences,
            "block_size": block_size, "streaming": streaming}


def build(model, tok, datasets: dict, shape: dict, resume, stop, tracker, params: dict, args) -> PretrainTrainer:
    """The Trainer with every callback, the time budget, the console and the side files in their order."""
    data_args, run_args, training_args = args
    main_process = training_args.process_index == 0
    # The Trainer's NaN filter evaluates `isnan(loss) or isinf(loss)` as a Python bool on every micro-step: a host-device
    # synchronisation on a GPU. PretrainTrainer.training_step counts non-finite losses on the device instead, and Guard
    # stops the run on one at the next logging step, where the logged loss would have hidden it (the filter replaces it).
    training_args.logging_nan_inf_filter = False
    if data_args.streaming:
        training_args.ignore_data_skip = True  # the stream restores its own position: no replay of skipped batches
    samples = callbacks.SampleCallback(tok, run_args.sample_prompts, run_args.max_new_tokens, tracker.log_samples,
                                       enabled=not sharded(training_args))
    guard = callbacks.Guard(stop, params["parameters"])
    flops, peak = speed.hardware(model, data_args.block_size, training_args, run_args.peak_tflops, main_process)
    side_files = [lambda step: {checkpoint.SHAPE: shape} if main_process else {}]
    if data_args.streaming:
        per_rank = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
        side_files.append(lambda step: {checkpoint.STREAM.format(rank=training_args.process_index):
                                        datasets["train"].state_dict(step * per_rank)})
    time_budget = budget.TimeBudget(run_args, resume)
    side_files.append(lambda step: time_budget.side_files(step) if main_process else {})
    test, first = datasets["test"], data_args.eval_subset_samples
    subset = torch.utils.data.Subset(test, range(first)) if first and first < len(test) else None
    trainer = PretrainTrainer(
        model=model,
        args=training_args,
        train_dataset=datasets["train"],
        eval_dataset=datasets["test"],
        processing_class=tok,
        data_collator=attention.collator(tok.eos_token_id, data_args.document_attention, model.config._attn_implementation,
                                        attention.windowed(model.config)),
        callbacks=[stop, guard, samples] + ([tracker.callback] if tracker.callback else []),
        bytes_per_token=blocks.label_bytes_per_token(datasets["test"], tok),  # exactly the tokens evaluated
        tokens_per_step=shape["sequences_per_step"] * data_args.block_size,
        flops_per_token=flops,
        peak_flops=peak,
        muon_learning_rate=run_args.muon_learning_rate,
        embedding_learning_rate=run_args.embedding_learning_rate,
        side_files=side_files,
        eval_subset=(subset, blocks.label_bytes_per_token(subset, tok)) if subset is not None else None,
    )
    guard.trainer = trainer
    time_budget.attach(trainer)  # after the other callbacks (Guard may add a save), before console's progress bar
    console.attach(trainer, Path(training_args.output_dir), main_process)
    return trainer


def fit(trainer, stop, resume, output_dir: Path) -> bool:
    """Train (resuming from the checkpoint decided); False when a signal stopped the run after saving a checkpoint."""
    if resume.done:
        print(f"{resume.checkpoint} is already at the last step: evaluating, saving and sampling it", flush=True)
        trainer.state.global_step = resume.done
        return True
    if resume.checkpoint:
        print(f"resuming from {resume.checkpoint}", flush=True)
    stop.install()
    stop.training = True
    try:
        trainer.train(resume_from_checkpoint=resume.checkpoint)
    finally:
        stop.training = False  # a Ctrl-C during the final save and sample interrupts at once
    if stop.stopped_at is None:
        return True
    if trainer.is_world_process_zero():
        print(f"stopped at step {stop.stopped_at}; checkpoint saved to {output_dir / f'checkpoint-{stop.stopped_at}'}. "
              "Run the same command to continue.", flush=True)
    return False
