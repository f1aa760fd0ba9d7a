"""Resolve a local folder, a Hugging Face id or a ModelScope id to a local snapshot folder; publish a folder to a hub.

How a name is read:
- an existing path is a local folder, used as it is;
- `modelscope:ORG/NAME` is a ModelScope id;
- `ORG/NAME` (or `hf:ORG/NAME`) that is not a local path is a Hugging Face id.

Endpoints follow the libraries' own variables (HF_ENDPOINT; MODELSCOPE_ENDPOINT, or the older MODELSCOPE_DOMAIN), and
downloads go to their own caches (HF_HUB_CACHE, MODELSCOPE_CACHE). A snapshot already in the cache is used without the
network; otherwise the hub is probed first, because ModelScope's client retries for ~22 s before giving up offline.
"""
import os
import re
from pathlib import Path

from .errors import UserError, report
from .net import reachable

HF, MODELSCOPE = "Hugging Face", "ModelScope"
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a model or tokenizer needs from a model repo: not the .bin/.pt/.gguf copies some repos also carry.
TOKENIZER_PATTERNS = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.py"]
MODEL_FILES = TOKENIZER_PATTERNS + ["*.safetensors"]


def parse(name: str) -> tuple[str | None, str]:
    """(hub, repo id), or (None, path) for a local path or anything that is not an id."""
    if name.startswith("modelscope:"):
        return MODELSCOPE, name.removeprefix("modelscope:")
    if name.startswith("hf:"):
        return HF, name.removeprefix("hf:")  # NAME alone is allowed here: publishing then goes to your own namespace
    if os.path.exists(name) or not REPO_ID.match(name):
        return None, name
    return HF, name


def endpoint(hub: str) -> str:
    if hub == HF:
        from huggingface_hub import constants

        return constants.ENDPOINT
    from modelscope_hub.config import HubConfig

    return HubConfig().endpoint  # MODELSCOPE_ENDPOINT > MODELSCOPE_DOMAIN > modelscope.cn, as the client decides


def _download_hint(hub: str, repo: str, kind: str, option: str) -> str:
    if hub == MODELSCOPE:
        command = f"modelscope download --{kind} {repo} --local_dir DIR"
    else:
        command = f"hf download {repo}{' --repo-type dataset' if kind == 'dataset' else ''} --local-dir DIR"
    option = "--train_file" if kind == "dataset" else option  # a downloaded dataset is a folder of files
    return f"Where there is network, download it with `{command}` and pass {option} DIR."


def _cache_dir(hub: str) -> str | None:
    # Read at each call: both libraries read their variable once, at import, and a long-lived process may change it.
    return os.environ.get("HF_HUB_CACHE" if hub == HF else "MODELSCOPE_CACHE") or None


def _cached(hub: str, repo: str, kind: str, patterns) -> str | None:
    try:
        if hub == HF:
            from huggingface_hub import snapshot_download

            return snapshot_download(repo, repo_type=kind, allow_patterns=patterns, cache_dir=_cache_dir(hub), local_files_only=True)
        from modelscope import snapshot_download

        return snapshot_download(repo_id=repo, repo_type=kind, cache_dir=_cache_dir(hub), local_files_only=True)
    except Exception:  # noqa: BLE001  (each library has its own "not in the cache" errors; any of them means: download)
        return None


def _download(hub: str, repo: str, kind: str, patterns) -> str:
    if hub == HF:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo, repo_type=kind, allow_patterns=patterns, cache_dir=_cache_dir(hub))
    if kind == "dataset":
        from modelscope import dataset_snapshot_download

        return dataset_snapshot_download(repo, cache_dir=_cache_dir(hub))
    from modelscope import snapshot_download

    return snapshot_download(repo, allow_patterns=patterns, cache_dir=_cache_dir(hub))


def snapshot(name: str, option: str, kind: str = "model", patterns=None) -> Path:
    """A local folder holding `name`: the folder itself, the cached snapshot, or a fresh download into the cache.

    option names the command-line option in messages; kind is "model" or "dataset"."""
    hub, repo = parse(name)
    if hub is None:
        if os.path.isdir(name):
            return Path(name)
        raise UserError(f"{option} '{name}' is not a local folder nor a hub id (ORG/NAME for Hugging Face, "
                        "modelscope:ORG/NAME for ModelScope). Check the path, or give the hub id.")
    cached = _cached(hub, repo, kind, patterns)
    # A snapshot cached for its tokenizer alone does not hold the weights --init_from needs.
    if cached and (patterns != MODEL_FILES or any(Path(cached).glob("*.safetensors"))):
        return Path(cached)
    url = endpoint(hub)
    offline = hub == HF and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline or not reachable(url):
        raise UserError(f"{option} '{name}': {hub} ({url}) cannot be reached{' (HF_HUB_OFFLINE is set)' if offline else ''} "
                        f"and {repo} is not in its cache. {_download_hint(hub, repo, kind, option)}")
    print(f"downloading {kind} {repo} from {hub} ({url}) ...", flush=True)
    try:
        return Path(_download(hub, repo, kind, patterns))
    except Exception as e:  # noqa: BLE001  (network, authentication and not-found errors differ by library and version)
        raise UserError(f"{option} '{name}': downloading {repo} from {hub} failed ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:300] if str(e) else 'no detail'}). Check the id and that you may read it; "
                        f"{_download_hint(hub, repo, kind, option)}") from None


def dataset_files(name: str) -> Path:
    """A ModelScope dataset as a local folder of data files, for the project's own readers (MsDataset does not import
    beside datasets 5)."""
    return snapshot(name, "--dataset_name", kind="dataset")


def fetch(data_args, model_args) -> dict:
    """Hub ids -> local folders, downloaded once into the hubs' caches: a ModelScope dataset is then read as files, and
    --init_from names a model folder (its shape replaces model_config). Returns the names as given, for the model card."""
    given = {"dataset_name": data_args.dataset_name, "init_from": model_args.init_from}
    kind, repo = parse(data_args.dataset_name) if data_args.dataset_name else (None, None)
    if kind == MODELSCOPE:
        data_args.train_file, data_args.dataset_name = str(dataset_files(data_args.dataset_name)), None
    elif kind == HF:
        data_args.dataset_name = repo  # streamed by datasets, which knows no hf: prefix
    if model_args.init_from:
        if model_args.config_overrides:
            raise UserError("--config_overrides cannot change a model continued with --init_from: its weights fix the shape. "
                            "Remove --config_overrides, or train from scratch with --model_config.")
        model_args.init_from = str(snapshot(model_args.init_from, "--init_from", patterns=MODEL_FILES))
        print(f"init_from: weights, shape and tokenizer from {model_args.init_from} (model_config is not used)", flush=True)
    return given


# ---- publishing: called after final/ is saved, so a failure here never costs the trained model.

def _login(hub: str, given: str | None) -> tuple[str | None, bool]:
    """(the token to pass to the library, whether the user is logged in at all)."""
    if given:
        return given, True
    if hub == HF:
        from huggingface_hub import get_token

        token = get_token()  # HF_TOKEN, or what `hf auth login` saved
        return token, bool(token)
    from modelscope_hub.config import HubConfig

    config = HubConfig()
    # MODELSCOPE_API_TOKEN is passed on; a `modelscope login` session is saved as cookies, which the client reads itself.
    return config.token, bool(config.token or config.load_token())


def publish(folder: Path, target: str, token: str | None = None) -> str:
    """Upload folder to target (ORG/NAME on Hugging Face, modelscope:ORG/NAME on ModelScope); return the repo's URL."""
    hub, repo = parse(target)
    if hub is None or os.path.exists(target):
        raise UserError(f"'{target}' is not a hub id to publish to: use ORG/NAME (Hugging Face) or modelscope:ORG/NAME (ModelScope).")
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} holds no saved model (no config.json): publish a run's final/ folder.")
    url = endpoint(hub)
    again = f"The model is saved in {folder}; upload it later with `python -m zhpretrain.hub {folder} {target}`."
    if not reachable(url):
        raise UserError(f"Could not publish to {target}: {hub} ({url}) cannot be reached. {again}")
    token, logged_in = _login(hub, token)
    if not logged_in:
        login = "`hf auth login` (or set HF_TOKEN)" if hub == HF else "`modelscope login --token TOKEN` (or set MODELSCOPE_API_TOKEN)"
        raise UserError(f"Could not publish to {target}: not logged in to {hub}. Run {login}. {again}")
    message = "Upload final/ from zhpretrain"
    skip = ["training_args.bin"]  # the Trainer's pickle of its arguments: not needed to load the model, and a pickle
    try:
        if hub == HF:
            from huggingface_hub import HfApi

            api = HfApi(endpoint=url, token=token)
            repo_url = api.create_repo(repo, exist_ok=True)  # NAME alone becomes USER/NAME
            api.upload_folder(repo_id=repo_url.repo_id, folder_path=str(folder), commit_message=message, ignore_patterns=skip)
            return str(repo_url)
        from modelscope.hub.api import HubApi

        api = HubApi(endpoint=url, token=token)
        api.create_repo(repo, exist_ok=True, token=token)
        api.upload_folder(repo_id=repo, folder_path=str(folder), commit_message=message, ignore_patterns=skip, token=token)
        return f"{url}/models/{repo}"
    except Exception as e:  # noqa: BLE001  (network, permission and quota errors differ by library)
        raise UserError(f"Could not publish to {target} ({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else 'no detail'}). "
                        f"Check the token's write permission and the repo name. {again}") from None


def publish_final(final: Path, hub_model_id: str | None, hub_token: str | None, modelscope_id: str | None) -> int:
    """Upload final/ (already saved, with its card) to the hubs asked for; 3 when an upload failed, the model being safe."""
    targets = [(f"hf:{hub_model_id}", hub_token)] if hub_model_id else []
    targets += [(f"modelscope:{modelscope_id}", None)] if modelscope_id else []
    code = 0
    for target, token in targets:
        try:
            print(f"published {final} to {publish(final, target, token)}", flush=True)
        except UserError as e:
            report(e)
            code = 3
    return code


if __name__ == "__main__":  # python -m zhpretrain.hub FOLDER TARGET: publish a saved model later
    import sys

    if len(sys.argv) != 3:
        sys.exit("usage: python -m zhpretrain.hub FOLDER ORG/NAME|modelscope:ORG/NAME")
    try:
        print(f"published to {publish(Path(sys.argv[1]), sys.argv[2])}")
    except UserError as e:
        sys.exit(report(e))
