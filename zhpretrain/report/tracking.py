"""Decide the SwanLab mode, start the run on the main process, and never let the dashboard stop training."""
import json
import os
import sys
import warnings
from pathlib import Path

from .. import secret
from ..net import reachable

MODES = ("cloud", "local", "offline", "disabled")
ID_FILE = "swanlab_id"  # in the output_dir: a resumed or re-run run continues this SwanLab run
# The curves a user watches, in this order. SwanLab 0.10.3's local dashboard puts every chart in one "default"
# section whatever its prefix (swanlab/deprecated/local.py: section_name "default"), in the order each key was first
# logged: so only these are logged, each payload in this order, and the bookkeeping the Trainer adds (epoch, global
# step, evaluation runtime and samples per second, tokens seen, total FLOs, the one-dot single_value/ summaries) is
# left out: it is in trainer_state.json and train.log. A run that evaluates at step 0 shows the eval/ curves first.
CHARTS = ("train/loss", "eval/loss", "eval/bits_per_byte", "train/learning_rate", "train/grad_norm",
          "train/tokens_per_second", "train/mfu", "eval/perplexity")


SAMPLES, SAMPLE_LABEL = "samples", "eval sample"  # the text panel of the samples generated at each evaluation


def _caption(label: str, i: int) -> str:
    """A text's caption. The local dashboard's text panel reads every item's caption and draws nothing at all when one
    has none (swanboard 0.1.10b2's TextModule reads more[i].caption, and an item without a caption is null there)."""
    return f"{label} {i + 1}"


def charts(payload: dict) -> dict:
    """The payload's curves a user watches, in the order of CHARTS; everything else is dropped."""
    return {key: payload[key] for key in CHARTS if key in payload}


def make_callback():
    """SwanLab's Trainer callback logging only CHARTS; it also replays a checkpoint's log history (see start)."""
    from swanlab.integration.transformers import SwanLabCallback, rewrite_logs

    class Callback(SwanLabCallback):
        def _log(self, payload, step: int) -> None:
            if kept := charts(payload):
                super()._log(kept, step)

        def replay(self, history: list[dict]) -> None:
            for entry in history:
                logs = {k: v for k, v in entry.items() if k != "step" and isinstance(v, (int, float))}
                if logs:
                    self._log(rewrite_logs(logs), entry["step"])

    return Callback()


def _saved_id(output_dir: str, checkpoint: str | None) -> str | None:
    """The run id stored beside the checkpoints, when there is a checkpoint to continue (a fresh start gets a new run)."""
    path = Path(output_dir) / ID_FILE
    if not (checkpoint and path.is_file()):
        return None
    return path.read_text().strip() or None


def _continue(swanlab, callback, mode: str, output_dir: str, checkpoint: str | None) -> str | None:
    """Store the run id; in local and offline mode, copy the checkpoint's curves into this run.

    SwanLab 0.10.3 resumes a run by id only in cloud mode (the server holds the experiment). Local and offline mode
    always write a new run-<time>-<id> folder (ensure_run_dir creates it with exist_ok=False, the record file is opened
    "xb") and the local dashboard adds a new experiment. So the new run gets the history the Trainer kept in the
    checkpoint: this run alone shows the whole curve, and the same id makes `swanlab sync` of offline folders continue
    one cloud experiment."""
    Path(output_dir, ID_FILE).write_text(swanlab.get_run().id)
    if mode in ("local", "offline") and checkpoint:
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
        callback.replay(state["log_history"])
        if mode == "local":
            return _one_experiment(swanlab, state["global_step"])
    return None


def _one_experiment(swanlab, step: int) -> str | None:
    """Make this run the dashboard's one experiment of its id: copy the earlier starts' samples up to the checkpoint's
    step into it (their scalars came with the checkpoint's history), then take the earlier experiments out of the
    dashboard's database. Their run folders stay on disk: nothing logged is deleted. Returns their name, which this
    experiment takes when it finishes (Run.finish): SwanLab saves its own copy of the experiment row then, name included.

    SwanLab 0.10.3's local mode makes every start a new experiment, named NAME-1, NAME-2 (deprecated/local.py), and
    swanboard has no call that removes an experiment but keeps its folder (its delete_experiment removes both)."""
    from swanboard.db import connect
    from swanboard.db.models import Chart, Experiment, Tag

    run = swanlab.get_run()
    [current] = Experiment.filter(Experiment.run_id == run.dir.name)
    earlier = sorted((e for e in Experiment.filter(Experiment.run_id.endswith(f"-{run.id}")) if e.id != current.id),
                     key=lambda e: e.id)
    samples = {}  # step -> texts; a later start's texts for a step replace an earlier one's
    for experiment in earlier:
        tag = Tag.filter(Tag.experiment_id == experiment.id, Tag.name == SAMPLES).first()
        folder = Path(run.dir.parent, experiment.run_id, "logs", tag.folder) if tag else None
        for log in sorted(folder.glob("*.log")) if folder and folder.is_dir() else []:
            for line in log.read_text(encoding="utf-8").splitlines():
                entry = json.loads(line)
                if entry["index"] <= step:
                    samples[entry["index"]] = entry["data"]
    for at, texts in sorted(samples.items()):
        swanlab.log({SAMPLES: [swanlab.Text(t, caption=_caption(SAMPLE_LABEL, i)) for i, t in enumerate(texts)]}, step=at)
    if earlier:
        names = [tag.name for e in earlier for tag in Tag.filter(Tag.experiment_id == e.id)]
        with connect().atomic():
            Experiment.delete().where(Experiment.id.in_([e.id for e in earlier])).execute()  # its rows go with it (cascade)
            project = current.project_id
            # the project's multi-experiment charts that no experiment feeds any more (as swanboard's own delete does)
            Chart.delete().where(Chart.id.in_([c.id for c in Chart.filter(Chart.project_id == project, Chart.name.in_(names))
                                               if c.sources.count() == 0])).execute()
        return earlier[0].name
    return None


def _rename(run_dir: str, name: str) -> None:
    from swanboard.db import connect
    from swanboard.db.models import Experiment

    with connect().atomic():
        Experiment.update(name=name).where(Experiment.run_id == run_dir).execute()


def logged_in() -> bool:
    """True when SwanLab finds an API key (environment, `swanlab login`'s netrc, config files); asks no network."""
    try:
        import swanlab

        return bool(swanlab.Settings().api_key)
    except Exception:  # a malformed SWANLAB_* variable: treat as not logged in, the init below will say more
        return False


def resolve_mode(requested: str | None) -> str:
    mode = (requested or os.environ.get("SWANLAB_MODE") or ("cloud" if logged_in() else "local")).lower()
    mode = "cloud" if mode == "online" else mode
    if mode not in MODES:
        from ..errors import UserError

        raise UserError(f"swanlab_mode '{mode}' is not one of {', '.join(MODES)}.")
    return mode


class Run:
    """The SwanLab run of this process (a no-op off the main process or when disabled)."""

    def __init__(self, swanlab=None, callback=None, name: str | None = None):
        self.swanlab, self.callback, self.name = swanlab, callback, name  # name: the dashboard name to take at the end

    def log_samples(self, step: int, texts: list[str], label: str = SAMPLE_LABEL, key: str = SAMPLES) -> None:
        from ..model.sampling import printable
        from .console import write

        texts = [printable(t) for t in texts]  # no control character reaches the console or the dashboard
        for text in texts:  # above the progress bar, one line each (train.log is read line by line): a newline shows as ⏎
            write(f"{label} @ step {step}: " + text.replace("\n", "\u23ce"))
        if self.swanlab is not None:
            self.swanlab.log({key: [self.swanlab.Text(t, caption=_caption(label, i)) for i, t in enumerate(texts)]}, step=step)

    def finish(self) -> None:
        if self.swanlab is not None:
            run_dir = self.swanlab.get_run().dir.name
            self.swanlab.finish()
            if self.name:
                try:
                    _rename(run_dir, self.name)
                except Exception as e:  # the dashboard never fails a finished run
                    print(f"warning: the SwanLab dashboard keeps this experiment's new name ({e})", flush=True)


def start(run_args, training_args, main_process: bool, config: dict, checkpoint: str | None = None) -> Run:
    """Start SwanLab on the main process. Cloud falls back to local with a warning; any other failure disables it.
    With a checkpoint to continue from, continue the SwanLab run stored in the output_dir.

    Secrets never reach the tracker: the config is redacted (secret.py), and when the command line holds one, SwanLab's
    own record of the command (its runtime probe reads /proc/self/cmdline) is turned off and the redacted command is
    put in the config instead."""
    if not main_process:
        return Run()
    if "SWANLAB_PROJECT" in os.environ:  # swanlab 0.10 parses it as a nested setting and every init fails
        warnings.warn("SWANLAB_PROJECT is ignored (it breaks swanlab.init); use --swanlab_project.", stacklevel=1)
        os.environ.pop("SWANLAB_PROJECT")
    mode = resolve_mode(run_args.swanlab_mode)
    if mode == "disabled":
        return Run()
    import swanlab

    name = run_args.swanlab_experiment_name or os.path.basename(os.path.normpath(training_args.output_dir))
    command = secret.command(sys.argv)
    config = secret.redact({**config, "command": " ".join(command)})
    init = dict(project=run_args.swanlab_project, experiment_name=name, log_dir=run_args.swanlab_log_dir, config=config)
    run_id = _saved_id(training_args.output_dir, checkpoint)
    if run_id:
        init.update(id=run_id, resume="allow")
    fallback = f"logging locally to {run_args.swanlab_log_dir} (see it with `swanlab watch {run_args.swanlab_log_dir}`)"
    try:
        # interactive=False: never block on a login prompt inside tmux or CI.
        settings = swanlab.Settings(interactive=False, probe=swanlab.Settings.Probe(runtime=command == sys.argv))
        if mode == "cloud":
            try:
                if not logged_in():
                    raise RuntimeError("not logged in: run `swanlab login` or set SWANLAB_API_KEY")
                if not reachable(swanlab.Settings().api_host):
                    raise ConnectionError("the SwanLab server cannot be reached")
                swanlab.init(mode="cloud", settings=settings, **init)
                callback = make_callback()
                _continue(swanlab, callback, mode, training_args.output_dir, checkpoint)
                return Run(swanlab, callback)
            except Exception as e:  # no network, a wrong key, a server error: the run goes on, logged locally
                warnings.warn(f"SwanLab cloud is unavailable ({e}); {fallback}.", stacklevel=1)
                if swanlab.has_run():
                    swanlab.finish()
                mode = "local"
        swanlab.init(mode=mode, settings=settings, **init)
        callback = make_callback()
        name = _continue(swanlab, callback, mode, training_args.output_dir, checkpoint)
    except Exception as e:
        warnings.warn(f"SwanLab could not start ({type(e).__name__}: {e}); training goes on without it.", stacklevel=1)
        return Run()
    return Run(swanlab, callback, name)
