"""Count host reads of tensor values: each call that turns a tensor's value into a Python value (item, bool, float,
int, index, tolist, numpy). On a GPU every such read of a device tensor makes the host wait for the device, so a
training step should make none unless it logs, evaluates or saves. On a CPU nothing waits, but the reads are the same
calls, so counting them here shows what a GPU run would wait for.

Reads made while a DataLoader starts an epoch or produces a batch are not counted: the data pipeline works on host tensors by design
(the sampler's permutation, the collator's positions), which no device computed."""
import collections
import contextlib
import functools
import sys

import torch
import torch.utils.data.dataloader as dataloader
from transformers import TrainerCallback

METHODS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "__array__")


class HostReads:
    """A context in which every host read is counted under the current key (None: not counted), with its call site."""

    def __init__(self):
        self.key, self.paused = None, 0
        self.counts = collections.Counter()
        self.sites = collections.defaultdict(collections.Counter)  # key -> "file:line (method)" -> count
        self._saved = {}

    def _wrap(self, name, original):
        @functools.wraps(original)
        def counted(tensor, *args, **kwargs):
            if self.key is not None and not self.paused:
                self.paused += 1  # a read inside a read (e.g. numpy() calling item) counts once
                try:
                    self.counts[self.key] += 1
                    self.sites[self.key][_site(name)] += 1
                finally:
                    self.paused -= 1
            return original(tensor, *args, **kwargs)
        return counted

    @contextlib.contextmanager
    def pause(self):
        self.paused += 1
        try:
            yield
        finally:
            self.paused -= 1

    def __enter__(self):
        for name in METHODS:
            self._saved[name] = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, self._wrap(name, self._saved[name]))
        self._loader = {name: getattr(dataloader._BaseDataLoaderIter, name) for name in ("__init__", "__next__")}
        for name, original in self._loader.items():
            setattr(dataloader._BaseDataLoaderIter, name, self._paused(original))
        return self

    def _paused(self, original):
        @functools.wraps(original)
        def paused(*args, **kwargs):
            with self.pause():
                return original(*args, **kwargs)
        return paused

    def __exit__(self, *exc):
        for name, original in self._loader.items():
            setattr(dataloader._BaseDataLoaderIter, name, original)
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        self._saved.clear()


def _site(method: str) -> str:
    """The innermost frame outside torch and this file: who asked for the value (frames, not traceback: no source read)."""
    frame = sys._getframe(2)
    while frame is not None and ("/torch/" in frame.f_code.co_filename or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    if frame is None:
        return f"? ({method})"
    return f"{frame.f_code.co_filename.split('site-packages/')[-1]}:{frame.f_lineno} ({method})"


class PerStep(TrainerCallback):
    """Counts a Trainer's host reads per optimizer step: step k runs from fetching its batches (get_batch_samples) to
    fetching the next step's, so it holds its micro-steps and whatever it logs, evaluates or saves. Steps that logged,
    evaluated, saved or stopped training are recorded in `busy`. Call attach(trainer) inside a HostReads context."""

    def __init__(self, reads: HostReads):
        self.reads, self.busy, self.steps = reads, set(), 0

    def attach(self, trainer):
        fetch = trainer.get_batch_samples

        def keyed_fetch(*args, **kwargs):
            self.reads.key = trainer.state.global_step + 1
            return fetch(*args, **kwargs)
        trainer.get_batch_samples = keyed_fetch
        trainer.add_callback(self)
        return self

    def on_step_end(self, args, state, control, **kwargs):
        self.steps = state.global_step
        if control.should_log or control.should_evaluate or control.should_save or control.should_training_stop:
            self.busy.add(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.reads.key = None

    def plain_steps(self) -> list[int]:
        return [k for k in range(1, self.steps + 1) if k not in self.busy]
