"""A wall-clock budget for training (--max_train_minutes) and the end-of-run time report.

The budget counts training time only: the trainer's Clock (clock.py) pauses for evaluation (sample generation included) and
for checkpoint saving, and the time before the first training step (reading and tokenizing data, training the
tokenizer, building the model) is not in it either. All of those are reported apart, in one line at the end:

    time: training 10:00 of a 10:00 budget, evaluation 0:41, saving 0:03; before training (start-up, data, tokenizer, model) 1:12; ...

The learning rate follows a warmup-stable-decay (WSD) schedule whose decay starts when (1 - budget_decay_ratio) of
the budget is spent, and whose last step ends at the budget. Hägele et al. 2024, "Scaling Laws and Compute-Optimal
Training Beyond Fixed Training Durations" (arXiv 2405.18392), find that a constant learning rate followed by a
(1-sqrt) cool-down over about 20% of training matches a cosine schedule tuned to the same length (and beats a linear
cool-down), so the run needs no length fixed in advance: exactly what a time budget lacks.

Every rank must use the same learning rate at every step (each DDP rank steps its own optimizer; replicas that used
different rates would drift apart). So the schedule is a function of the step and of values all ranks agreed on:
at check steps (also chosen from agreed values) one all-reduce takes the largest training time of any rank; once it
reaches the decay point, the decay's first step and its length in steps are fixed from it and from the measured
seconds per step, and from then on everything runs by step: the Trainer stops at the decay's end like at max_steps
(state.max_steps is set to it), so the last step is evaluated and saved as usual.

The budget state (training seconds used, the decay once fixed) is written into every checkpoint (checkpoint.BUDGET), so
Ctrl-C or a crash followed by the same command continues the same budget and the same schedule (run/resume.py checks
that the settings did not change and hands the state back).
"""
import math
import time

import torch
from transformers import TrainerCallback

from ..errors import UserError
from ..report import console
from ..run.checkpoint import BUDGET
from ..run.resume import BUDGET_SETTINGS as SETTINGS
from .clock import duration


def lr_factor(step: int, warmup_steps: int, decay_start: int | None, decay_steps: int | None, min_lr_ratio: float) -> float:
    """The multiple of the peak learning rate that optimizer step index `step` uses (that step makes global_step step + 1).

    Warmup as the Trainer's linear and cosine schedules do it (step / warmup_steps), then the peak, until the decay is
    fixed. The decay runs over decay_steps steps from decay_start, (1-sqrt) from the level it started at down to
    min_lr_ratio, with the Trainer's own convention (its get_wsd_schedule too): the first decay step still uses the
    level it starts from, and the rate reaches min_lr_ratio exactly when the last step is done. A decay that starts
    during warmup (a tiny budget) starts from the warmup's level."""
    def level(k: int) -> float:
        return min(1.0, k / warmup_steps) if warmup_steps > 0 else 1.0

    if decay_start is None or step < decay_start:
        return level(step)
    progress = min(1.0, (step - decay_start) / max(1, decay_steps))
    start = level(decay_start)
    return min_lr_ratio + (start - min_lr_ratio) * (1.0 - math.sqrt(progress))


class TimeBudget(TrainerCallback):
    """The wall-clock budget (when max_train_minutes is set) and the time report (always).

    Attach it with attach(trainer) before console.attach: its on_train_begin sets state.max_steps before the progress
    bar reads it. It runs after Guard in on_step_end, so a checkpoint that a stop request adds also gets the state file."""

    def __init__(self, run_args, resume=None):
        self.settings = {k: getattr(run_args, k) for k in SETTINGS}
        self.minutes, self.decay_ratio, self.min_lr_ratio = (self.settings[k] for k in SETTINGS)
        self.budget = self.minutes * 60 if self.minutes else None
        self.trainer, self.clock, self.scheduler = None, None, None
        self.checkpoint = resume.checkpoint if resume else None
        # Agreed by all ranks (restored from the checkpoint, or fixed at a check): the learning-rate schedule.
        self.decay_start = self.decay_steps = self.decay_seconds = self.trigger = None
        # Totals of the launches before this one, as of the checkpoint resumed (time after it was lost and is redone).
        self.earlier = {"training": 0.0, "evaluation": 0.0, "saving": 0.0, "before": 0.0, "launches": 0}
        self.cap = self.launch_step = self.next_check = self.last_check = self.first_check = None
        self.ended = None  # at on_train_end: (wall time, then this launch's training, evaluation, saving, before seconds)
        saved = resume.budget if resume else None  # checked against these settings by resume.check_budget
        if saved:
            self.earlier = {"training": saved["training_seconds"], "evaluation": saved["evaluation_seconds"],
                            "saving": saved["saving_seconds"], "before": saved["before_training_seconds"],
                            "launches": saved["launches"]}
            if self.minutes:  # a decay already fixed is kept even if the budget changed: the schedule stays continuous
                self.decay_start, self.decay_steps = saved["decay_start"], saved["decay_steps"]
                self.decay_seconds, self.trigger = saved["decay_started_at_seconds"], saved["decay_trigger"]

    # ---- state in checkpoints

    def _state(self, step: int) -> dict:
        now = self._launch()
        return {"settings": self.settings, "step": step, "launches": self.earlier["launches"] + 1,
                "training_seconds": now["training"], "evaluation_seconds": now["evaluation"], "saving_seconds": now["saving"],
                "before_training_seconds": now["before"], "decay_start": self.decay_start, "decay_steps": self.decay_steps,
                "decay_started_at_seconds": self.decay_seconds, "decay_trigger": self.trigger}

    # ---- the clock

    def side_files(self, step: int) -> dict:
        """What a checkpoint carries for the budget (written by the trainer's save, main process)."""
        return {BUDGET: self._state(step)}

    def attach(self, trainer) -> None:
        self.trainer, self.clock = trainer, trainer.clock
        trainer.budget = self
        trainer.add_callback(self)

    def used(self) -> float:
        """Training seconds of the whole run so far: earlier launches plus this one (this process's clock)."""
        return self.earlier["training"] + self.clock.training_seconds()

    def _launch(self) -> dict:
        """Totals so far (earlier launches plus this one); frozen when training ended."""
        now = dict(zip(("training", "evaluation", "saving", "before"), self.ended[1:])) if self.ended is not None else \
            self.clock.launch() if self.clock is not None else dict.fromkeys(("training", "evaluation", "saving", "before"), 0.0)
        return {k: self.earlier[k] + v for k, v in now.items()}

    def _agreed(self, seconds: float, device) -> float:
        """The largest value of any rank: one all-reduce (only at check steps)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return seconds
        t = torch.tensor([seconds], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t.item())

    # ---- the learning-rate schedule (PretrainTrainer.create_scheduler asks for it when a budget is set)

    def make_scheduler(self, optimizer, warmup_steps: int):
        share = self.trainer.args.warmup_steps if self.trainer is not None else None
        if share is not None and 0 < share < 1:
            # The Trainer takes a share against max_steps; under a budget that is only a cap, and the steps the budget
            # will allow are known only when its decay is fixed, near the end: a share of them cannot ramp from step 1.
            raise UserError(f"--warmup_steps {share:g} is a share of the steps, but with --max_train_minutes the number of "
                            f"steps is set by the time budget, not known in advance: the share would be taken of the step cap "
                            f"(max_steps, or the epochs' steps), {warmup_steps:,} warmup steps whatever the budget allows. "
                            "Give --warmup_steps as a number of steps (1 or more).")
        self.warmup_steps = warmup_steps
        # A plain function, not a callable object: LambdaLR would pickle an object's attributes into scheduler.pt and
        # restore them on resume, a second copy of the state next to zhpretrain_budget.json.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.factor(step))
        return self.scheduler

    def factor(self, step: int) -> float:
        return lr_factor(step, self.warmup_steps, self.decay_start, self.decay_steps, self.min_lr_ratio)

    # ---- callback

    def on_train_begin(self, args, state, control, **kwargs):
        if not self.budget:
            return
        if self.scheduler is None:  # under DeepSpeed the Trainer may wrap ours: its absence is what tells
            raise UserError("max_train_minutes: the budget's learning-rate schedule could not be installed (a DeepSpeed "
                            "config with its own scheduler?). Remove the scheduler from that config.")
        # The Trainer's own end (max_steps, or the epochs) stays an upper bound: the decay also starts by
        # (1 - budget_decay_ratio) of it, so a run that reaches it first still ends with its schedule completed.
        self.cap, self.launch_step = state.max_steps, state.global_step
        self.cap_start = self.cap - max(1, round(self.decay_ratio * self.cap))
        self.last_check = (self.earlier["training"], state.global_step)
        self.next_check = state.global_step + 1
        if self.decay_start is not None:
            state.max_steps = min(self.cap, self.decay_start + self.decay_steps)
        if state.is_world_process_zero:
            used = f"; {duration(self.earlier['training'])} already used by {self.checkpoint}" if self.earlier["training"] else ""
            kind = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
            other = f" (lr_scheduler_type {kind} is not used)" if kind != "linear" else ""
            floor = f"{self.min_lr_ratio * args.learning_rate:.2e}" if self.min_lr_ratio else "0"
            fixed = (f"; its decay, fixed before, runs from step {self.decay_start:,} to step {state.max_steps:,}"
                     if self.decay_start is not None else "")
            console.write(f"budget: {duration(self.budget)} of training time (evaluation and saving not counted), at most "
                          f"{self.cap:,} steps{used}. Learning rate: {self.warmup_steps} warmup steps, then {args.learning_rate:.2e} "
                          f"until {1 - self.decay_ratio:.0%} of the budget (or step {self.cap_start:,}), then a 1-sqrt decay to "
                          f"{floor} ending with the budget{other}{fixed}")

    def on_step_end(self, args, state, control, **kwargs):
        if self.budget and self.decay_start is None and state.global_step >= self.next_check:
            self._check(args, state)
        if self.budget and self.decay_start is not None and state.global_step >= state.max_steps:
            control.should_log = True  # the last step is logged too: the curves show where the schedule ended
        if control.should_training_stop:
            # Training ends with this step: what the Trainer does next (the last logging, evaluation and save, its
            # summary) is "after training", not training time.
            self._freeze()

    def _check(self, args, state) -> None:
        """All ranks, at the same step: fix the decay once its time has come, or choose the next check step."""
        step, seconds = state.global_step, self._agreed(self.used(), args.device)
        last_seconds, last_step = self.last_check
        rate = max(seconds - last_seconds, 1e-9) / max(step - last_step, 1)  # seconds per step since the last check
        self.last_check = (seconds, step)
        self.first_check = self.first_check or (seconds, step)  # after this launch's first step (its start-up cost)
        decay_at = (1 - self.decay_ratio) * self.budget
        if seconds >= decay_at or step >= self.cap_start:
            # The decay fills the budget left (not a fixed share: a late check must not overshoot), and stops at the cap,
            # at this launch's mean seconds per step: the last check's window can be a few fast steps (the cpu-speedrun
            # at 1,024 tokens a step: 0.145 s a step over the last 25, 0.169 over the launch; it ended 27 s over budget).
            mean = max(seconds - self.first_check[0], 1e-9) / max(step - self.first_check[1], 1) if step > self.first_check[1] else rate
            self.decay_steps = max(1, min(math.floor((self.budget - seconds) / mean), self.cap - step))
            self.decay_start, self.decay_seconds = step, seconds
            self.trigger = "time" if seconds >= decay_at else "max_steps"
            state.max_steps = step + self.decay_steps  # DefaultFlowCallback stops, evaluates and saves there
            if state.is_world_process_zero:
                console.write(f"budget: the learning rate decays from step {step:,} (training {duration(seconds)} of "
                              f"{duration(self.budget)}{', max_steps ' + format(self.cap, ',') + ' comes first' if self.trigger == 'max_steps' else ''}) "
                              f"over {self.decay_steps:,} steps, ending at step {state.max_steps:,}")
            return
        # Check again around the decay point as the rate predicts it; early on every 1, 2, 4, ... steps (the first
        # steps are slow and the rate unknown), never more than logging_steps apart.
        ahead = math.ceil((decay_at - seconds) / rate)
        interval = max(1, min(ahead, step - self.launch_step, max(1, int(state.logging_steps or 1))))
        self.next_check = min(step + interval, max(self.cap_start, step + 1))
        # Shown by the progress bar and the log lines (step N/M, ETA) until the decay fixes the real end.
        estimate = step + math.ceil((self.budget - seconds) / rate)
        state.max_steps = min(self.cap, max(estimate, self.next_check + 1))

    def on_train_end(self, args, state, control, **kwargs):
        self._freeze()  # when no step said it was the last one

    def _freeze(self) -> None:
        if self.ended is not None or self.clock.begun is None:
            return
        launch = self._launch()
        self.ended = (time.time(), *(launch[k] - self.earlier[k] for k in ("training", "evaluation", "saving", "before")))

    # ---- the report

    def report(self, run=None) -> None:
        """One line at the end of a run (main process): where the time went, the budget beside training; and the same
        numbers to SwanLab under time/ (minutes)."""
        if self.trainer is None or not self.trainer.is_world_process_zero():
            return
        totals = self._launch()
        after = time.time() - self.ended[0] if self.ended else None
        launches = self.earlier["launches"] + (1 if self.ended else 0)
        if not self.ended:  # this launch trained nothing: say so, then the run's own times as its checkpoint recorded them
            e = self.earlier
            line = (f"time: nothing left to train in this launch (the run was already at step {self.trainer.state.global_step:,}); it "
                    f"took {duration(time.time() - self.clock.process_start)}")
            if e["launches"]:
                line += (f"; the run's training took {duration(e['training'])}, evaluation {duration(e['evaluation'])}, saving "
                         f"{duration(e['saving'])}" + (f" over {e['launches']} launches" if e["launches"] > 1 else ""))
            console.write(line)
            return
        training = f"training {duration(totals['training'])}"
        if self.budget:
            training += f" of a {duration(self.budget)} budget"
            if self.trigger == "max_steps":
                training += f" (max_steps {self.cap or self.trainer.state.max_steps:,} came first)"
        parts = [training, f"evaluation {duration(totals['evaluation'])}", f"saving {duration(totals['saving'])}"]
        line = "time: " + ", ".join(parts) + f"; before training (start-up, data, tokenizer, model) {duration(totals['before'])}"
        if after is not None:
            line += f"; after training (final evaluation, save, sample) {duration(after)}"
        if launches > 1:
            line += f" (over {launches} launches, each resumed from its last checkpoint)"
        console.write(line)
        names = {"training": "training", "evaluation": "evaluation", "saving": "saving", "before": "before_training"}
        metrics = {f"time/{names[k]}_minutes": v / 60 for k, v in totals.items()}
        if self.budget:
            metrics["time/budget_minutes"] = self.budget / 60
        if after is not None:
            metrics["time/after_training_minutes"] = after / 60
        if run is not None and getattr(run, "swanlab", None) is not None:
            try:
                run.swanlab.log(metrics, step=self.trainer.state.global_step)
            except Exception as e:  # the dashboard never fails a finished run
                print(f"warning: SwanLab did not take the time metrics ({e})", flush=True)
