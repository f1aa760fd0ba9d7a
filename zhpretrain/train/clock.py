"""The one clock of a launch: when the process started, training seconds (evaluation and saving paused out), the rate
since the last reading, and the time left. Throughput, the wall-clock budget, the ETA and the time report all read it,
so neither an evaluation nor a slow disk makes training look slower or eats the budget."""
import contextlib
import time

_IMPORTED = time.perf_counter()


def duration(seconds: float, hours: bool = False) -> str:
    """m:ss, or h:mm:ss from an hour (always h:mm:ss with hours=True, as the ETA and the Trainer's runtime show it)."""
    minutes, secs = divmod(round(max(0.0, seconds)), 60)
    h, minutes = divmod(minutes, 60)
    return f"{h}:{minutes:02d}:{secs:02d}" if h or hours else f"{minutes}:{secs:02d}"


def _process_start() -> float:
    """When this process started (wall clock): the time before training includes importing the libraries."""
    try:
        import psutil  # installed with accelerate

        return psutil.Process().create_time()
    except Exception:  # no psutil: from when this module was imported
        return time.time() - (time.perf_counter() - _IMPORTED)


class Clock:
    """Seconds spent training: from the first training step on, less the time spent evaluating (sample generation
    included) and saving (side files included; rank 0 hashes the files into the manifest beside training), which are
    counted apart."""

    def __init__(self):
        self.process_start = _process_start()  # wall clock
        self.begun = self.begun_step = None  # perf_counter and global_step at this launch's first training step
        self.spent = {"evaluation": 0.0, "saving": 0.0}
        self.before = dict.fromkeys(self.spent, 0.0)  # the same, before the first step (eval_on_start): reported, not subtracted
        self._mark = None  # (training seconds, step) at the last rate() reading

    def start(self, step: int) -> None:
        if self.begun is None:
            self.begun, self.begun_step = time.perf_counter(), step
            self._mark = (0.0, step)  # a resumed run's rate is its own

    def training_seconds(self) -> float:
        if self.begun is None:
            return 0.0
        return time.perf_counter() - self.begun - sum(self.spent.values())

    @contextlib.contextmanager
    def paused(self, what: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            # Before training starts (eval_on_start) nothing is running to pause: that time is only kept for the report.
            (self.spent if self.begun is not None else self.before)[what] += time.perf_counter() - start

    def rate(self, step: int) -> float | None:
        """Steps per training second since the last reading (or the first step), or None if none passed."""
        seconds, mark = self.training_seconds(), self._mark
        if mark is None:
            return None
        self._mark = (seconds, step)
        if step > mark[1] and seconds > mark[0]:
            return (step - mark[1]) / (seconds - mark[0])
        return None

    def eta(self, step: int, max_steps: int) -> float | None:
        """Wall seconds to max_steps at this launch's pace so far, evaluations included (they are part of the wait)."""
        if self.begun is None or max_steps <= 0 or step <= self.begun_step:
            return None
        return (max_steps - step) * (time.perf_counter() - self.begun) / (step - self.begun_step)

    def launch(self) -> dict:
        """This launch's seconds so far: training, evaluation, saving, and before training (start-up, data, tokenizer,
        model: from the process start to the first step, less any evaluation or saving before it)."""
        if self.begun is None:
            return dict.fromkeys(("training", "evaluation", "saving", "before"), 0.0)
        begun_wall = time.time() - (time.perf_counter() - self.begun)
        return {"training": self.training_seconds(),
                **{k: self.spent[k] + self.before[k] for k in self.spent},
                "before": begun_wall - self.process_start - sum(self.before.values())}
