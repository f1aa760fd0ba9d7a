"""Decide the SwanLab mode, start the run on the main process, and never let the dashboard stop training."""
import os
import warnings

from .net import reachable

MODES = ("cloud", "local", "offline", "disabled")


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
        from .errors import UserError

        raise UserError(f"swanlab_mode '{mode}' is not one of {', '.join(MODES)}.")
    return mode


class Run:
    """The SwanLab run of this process (a no-op off the main process or when disabled)."""

    def __init__(self, swanlab=None, callback=None):
        self.swanlab, self.callback = swanlab, callback

    def log_samples(self, step: int, texts: list[str], label: str = "eval sample", key: str = "samples") -> None:
        from .console import write

        for text in texts:
            write(f"{label} @ step {step}: {text[:200]!r}")  # above the progress bar; repr keeps it on one line
        if self.swanlab is not None:
            self.swanlab.log({key: [self.swanlab.Text(t) for t in texts]}, step=step)

    def finish(self) -> None:
        if self.swanlab is not None:
            self.swanlab.finish()


def start(run_args, training_args, main_process: bool, config: dict) -> Run:
    """Start SwanLab on the main process. Cloud falls back to local with a warning; any other failure disables it."""
    if not main_process:
        return Run()
    if "SWANLAB_PROJECT" in os.environ:  # swanlab 0.10 parses it as a nested setting and every init fails
        warnings.warn("SWANLAB_PROJECT is ignored (it breaks swanlab.init); use --swanlab_project.", stacklevel=1)
        os.environ.pop("SWANLAB_PROJECT")
    mode = resolve_mode(run_args.swanlab_mode)
    if mode == "disabled":
        return Run()
    import swanlab
    from swanlab.integration.transformers import SwanLabCallback

    name = run_args.swanlab_experiment_name or os.path.basename(os.path.normpath(training_args.output_dir))
    init = dict(project=run_args.swanlab_project, experiment_name=name, log_dir=run_args.swanlab_log_dir, config=config)
    fallback = f"logging locally to {run_args.swanlab_log_dir} (see it with `swanlab watch {run_args.swanlab_log_dir}`)"
    try:
        settings = swanlab.Settings(interactive=False)  # never block on a login prompt inside tmux or CI
        if mode == "cloud":
            try:
                if not logged_in():
                    raise RuntimeError("not logged in: run `swanlab login` or set SWANLAB_API_KEY")
                if not reachable(swanlab.Settings().api_host):
                    raise ConnectionError("the SwanLab server cannot be reached")
                swanlab.init(mode="cloud", settings=settings, **init)
                return Run(swanlab, SwanLabCallback())
            except Exception as e:  # no network, a wrong key, a server error: the run goes on, logged locally
                warnings.warn(f"SwanLab cloud is unavailable ({e}); {fallback}.", stacklevel=1)
                if swanlab.has_run():
                    swanlab.finish()
                mode = "local"
        swanlab.init(mode=mode, settings=settings, **init)
    except Exception as e:
        warnings.warn(f"SwanLab could not start ({type(e).__name__}: {e}); training goes on without it.", stacklevel=1)
        return Run()
    return Run(swanlab, SwanLabCallback())
