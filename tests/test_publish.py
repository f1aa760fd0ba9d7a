"""Publishing final/ after training: to a local fake Hugging Face endpoint through huggingface_hub itself (the files
that arrive read back byte for byte, the token never written to disk), ModelScope's upload call recorded, and upload
failures (not logged in, offline) fast and clear with final/ left intact."""
import base64
import http.server
import json
import threading
import time
from pathlib import Path

import pytest

import pretrain
from conftest import DEMO
from test_hub import closed_port_url, tiny_causal_lm
from zhpretrain import hub

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub(http.server.BaseHTTPRequestHandler):
    """The few Hugging Face hub API calls huggingface_hub makes to create a repo and commit small files (checked against
    huggingface_hub 2.4): files are sent base64-encoded in the commit request, so they are kept here to be read back."""

    commits: dict  # repo id -> {path in repo: bytes}
    tokens: list  # the Authorization headers seen

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.tokens.append(self.headers.get("Authorization"))
        url = f"http://127.0.0.1:{self.server.server_address[1]}"
        if self.path == "/api/repos/create":
            request = json.loads(body)
            return self.reply({"url": f"{url}/{request['organization']}/{request['name']}"})
        if "/preupload/" in self.path:  # every file goes inline in the commit, none through LFS
            return self.reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                         for f in json.loads(body)["files"]]})
        if "/commit/" in self.path:
            repo = self.path.removeprefix("/api/models/").split("/commit/")[0]
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.commits.setdefault(repo, {})[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            return self.reply({"commitUrl": f"{url}/{repo}/commit/{COMMIT}", "commitOid": COMMIT})
        self.reply({})  # /api/validate-yaml: the card's front matter is fine

    def do_GET(self):  # noqa: N802
        self.reply({})

    def reply(self, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint(monkeypatch):
    """A local HTTP server standing in for both hubs. Hugging Face uploads really go to it through huggingface_hub; for
    ModelScope (whose upload protocol we do not emulate) the server answers the reachability probe and the library's
    create_repo / upload_folder calls are recorded instead of sent."""
    handler = type("Hub", (FakeHub,), {"commits": {}, "tokens": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    from huggingface_hub import constants
    from modelscope.hub.api import HubApi

    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", url)
    modelscope = []

    def record(self, repo_id, folder_path=None, **kwargs):
        skipped = set(kwargs.get("ignore_patterns") or [])  # exact names only, enough for what we pass
        modelscope.append((repo_id, Path(folder_path), kwargs.get("token"),
                           {p.name: p.read_bytes() for p in Path(folder_path).iterdir() if p.name not in skipped}))

    monkeypatch.setattr(HubApi, "create_repo", lambda self, repo_id, **kw: None)
    monkeypatch.setattr(HubApi, "upload_folder", record)
    yield url, handler, modelscope
    server.shutdown()


def test_final_is_published_to_both_hubs_with_its_card(tmp_path, endpoint, monkeypatch):
    url, hf, modelscope = endpoint
    monkeypatch.setenv("MODELSCOPE_API_TOKEN", "ms-test-token")
    tiny_causal_lm(tmp_path / "tiny")
    argv = ["--init_from", str(tmp_path / "tiny"), "--train_file", str(DEMO), "--block_size", "64", "--max_steps", "1",
            "--per_device_train_batch_size", "4", "--max_eval_samples", "4", "--eval_strategy", "no", "--output_dir",
            str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"), "--swanlab_mode", "disabled",
            "--push_to_hub", "true", "--hub_model_id", "me/tiny-zh", "--hub_token", "hf-test-token", "--push_to_modelscope", "me/tiny-zh"]
    assert pretrain.main(argv) == 0
    final = tmp_path / "out" / "final"
    on_disk = {p.name: p.read_bytes() for p in final.iterdir() if p.name != "training_args.bin"}
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(on_disk)
    assert b"## Final evaluation" in on_disk["README.md"]
    # Hugging Face: the files that reached the endpoint are final/'s, byte for byte, card included; no checkpoint, and
    # no training_args.bin (a pickle, not needed to load the model).
    assert hf.commits == {"me/tiny-zh": on_disk}
    assert set(hf.tokens) == {"Bearer hf-test-token"}
    [(repo, folder, token, files)] = modelscope
    assert (repo, folder, token, files) == ("me/tiny-zh", final, "ms-test-token", on_disk)
    for path in (tmp_path / "out").rglob("*"):  # the Trainer pickles its arguments into every save: not the token
        assert not path.is_file() or b"hf-test-token" not in path.read_bytes(), path


def test_upload_failures_are_fast_clear_and_leave_final_intact(tmp_path, endpoint, monkeypatch, capsys):
    url, hf, modelscope = endpoint
    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    (final / "README.md").write_text("card")
    (final / "config.json").write_text("{}")
    (final / "model.safetensors").write_bytes(b"weights")
    before = {p.name: p.read_bytes() for p in final.iterdir()}
    # not logged in: no token anywhere
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.delenv("MODELSCOPE_API_TOKEN", raising=False)
    monkeypatch.setenv("MODELSCOPE_HOME", str(tmp_path / "ms-home"))  # where `modelscope login` keeps its session
    started = time.perf_counter()
    assert hub.publish_final(final, "tiny-zh", None, "me/tiny-zh") == 3
    err = capsys.readouterr().err
    assert "not logged in to Hugging Face. Run `hf auth login`" in err and "not logged in to ModelScope" in err
    # offline: nothing listens at the endpoint any more
    monkeypatch.setattr(constants, "ENDPOINT", closed_port_url())
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", closed_port_url())
    assert hub.publish_final(final, "me/tiny-zh", "hf-test-token", "me/tiny-zh") == 3
    assert time.perf_counter() - started < 5
    err = " ".join(capsys.readouterr().err.split())
    assert "Could not publish to hf:me/tiny-zh: Hugging Face (http://127.0.0.1:" in err and "cannot be reached" in err
    assert "Could not publish to modelscope:me/tiny-zh: ModelScope" in err
    assert f"The model is saved in {final}; upload it later with `python -m zhpretrain.hub {final} modelscope:me/tiny-zh`" in err
    assert hf.commits == {} and modelscope == [] and {p.name: p.read_bytes() for p in final.iterdir()} == before
