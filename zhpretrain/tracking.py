"""Decide the SwanLab mode, start the run on the main process, and never let the dashboard stop training."""
import os
import warnings

MODES = ("cloud", "local", "offline", "disabled")


def logged_in() -> bool:
    """True when an API key is in the environment or was saved by `swanlab login` (no network is asked)."""
    if os.environ.get("SWANLAB_API_KEY"):
        return True
    try:
        from swanlab.core_python.auth import get_key  # noqa: F401  (location varies by version)
    except ImportError:
        pass
    try:
        import swanlab

        return bool(swanlab.env.get_api_key() if hasattr(swanlab, "env") and hasattr(swanlab.env, "get_api_key") else None)
    except Exception:  # any failure to find a key means: not logged in
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

    def log_samples(self, step: int, texts: list[str], label: str = "eval sample") -> None:
        for text in texts:
            print(f"{label} @ step {step}: {text[:200]!r}", flush=True)
        if self.swanlab is not None:
            self.swanlab.log({"samples": [self.swanlab.Text(t) for t in texts]}, step=step)

    def finish(self) -> None:
        if self.swanlab is not None:
            self.swanlab.finish()


def start(run_args, training_args, main_process: bool, config: dict) -> Run:
    if not main_process:
        return Run()
    mode = resolve_mode(run_args.swanlab_mode)
    if mode == "disabled":
        return Run()
    import swanlab
    from swanlab.integration.transformers import SwanLabCallback

    name = run_args.swanlab_experiment_name or os.path.basename(os.path.normpath(training_args.output_dir))
    init = dict(project=run_args.swanlab_project, experiment_name=name, log_dir=run_args.swanlab_log_dir, config=config)
    try:
        swanlab.init(mode=mode, **init)
    except Exception as e:  # no network, a wrong key, a server error: the run goes on, logged locally
        if mode != "cloud":
            raise
        warnings.warn(f"SwanLab cloud is unreachable ({type(e).__name__}); logging locally to {run_args.swanlab_log_dir} "
                      f"instead (view it with `swanlab watch {run_args.swanlab_log_dir}`, upload later with `swanlab sync`).",
                      stacklevel=1)
        swanlab.init(mode="local", **init)
    return Run(swanlab, SwanLabCallback())
