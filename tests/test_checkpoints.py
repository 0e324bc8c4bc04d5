"""Getting a checkpoint: ``download_checkpoint`` says which of its causes a failure is, in seconds, and a
checkpoint missing what a prompt mode needs is refused by name before anything is written.

The hub causes are produced against a real huggingface_hub client: an endpoint where nothing listens
(hub unreachable), one that accepts connections and never answers (timeout), and a local HTTP server
answering the hub's ``auth-check`` as the hub does (gated, not found); offline states are real
Hugging Face cache folders built here.
"""

import http.server
import json
import os
import shutil
import socket
import threading
import time

import pytest

from sam3_ops.core import checkpoint
from sam3_ops.core.checkpoint import ModelLoadError, download_checkpoint

TOKEN = "hf_PLANTEDsecret0123456789abcdef"


@pytest.fixture
def online(monkeypatch, tmp_path):
    """huggingface_hub as if ``HF_HUB_OFFLINE`` were unset, on an empty cache, no stored login."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(checkpoint, "_resolved", {})

    def at(endpoint):
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)

    return at


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again on exit: connections are refused


@pytest.fixture
def fake_hub():
    """A local server answering the hub's auth-check with the status and X-Error-Code it is given."""
    answer = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            answer["authorization"] = self.headers.get("authorization")
            self.send_response(answer["status"])
            self.send_header("X-Error-Code", answer["code"])
            self.send_header("X-Error-Message", answer["code"])
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    answer["endpoint"] = f"http://127.0.0.1:{server.server_address[1]}"
    yield answer
    server.shutdown()
    server.server_close()


def test_an_unreachable_hub_is_named_within_seconds(online):
    online(f"http://127.0.0.1:{_closed_port()}")
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as raised:
        download_checkpoint("facebook/sam3", token=TOKEN)
    elapsed = time.monotonic() - started
    message = str(raised.value)
    assert "unreachable" in message and "not in the local cache" in message and "local checkpoint directory" in message
    assert "gated" not in message and TOKEN not in message
    assert elapsed < 5, f"took {elapsed:.1f} s"


def test_a_hub_that_never_answers_is_unreachable_after_the_timeout(online, monkeypatch):
    online_socket = socket.socket()
    online_socket.bind(("127.0.0.1", 0))
    online_socket.listen(8)  # accepts connections (the backlog) and never answers
    try:
        online(f"http://127.0.0.1:{online_socket.getsockname()[1]}")
        monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1")
        started = time.monotonic()
        with pytest.raises(ModelLoadError, match="unreachable"):
            download_checkpoint("facebook/sam3")
        assert time.monotonic() - started < 10  # one request, one timeout, no retries
    finally:
        online_socket.close()


@pytest.mark.parametrize(
    "token, status, code, words",
    [
        (None, 401, "GatedRepo", ["gated", "no Hugging Face token", "hf auth login", "HF_TOKEN"]),
        (TOKEN, 403, "GatedRepo", ["gated", "has not accepted its licence", "hf auth login"]),
        (None, 404, "RepoNotFound", ["not found on the Hugging Face hub", "check the id"]),
    ],
)
def test_gated_and_missing_repositories_are_told_apart(online, fake_hub, token, status, code, words):
    online(fake_hub["endpoint"])
    fake_hub.update(status=status, code=code)
    with pytest.raises(ModelLoadError) as raised:
        download_checkpoint("facebook/sam3", token=token)
    message = str(raised.value)
    for word in words:
        assert word in message
    assert "unreachable" not in message and TOKEN not in message
    # the token was sent to the hub (and only there)
    assert fake_hub["authorization"] == (f"Bearer {TOKEN}" if token else None)


def _hub_cache(root, build, files=None) -> str:
    """A Hugging Face cache under ``root`` in which ``build(path)`` wrote ``facebook/sam3`` (keeping only
    ``files`` if given)."""
    commit = "0" * 40
    repo = root / "models--facebook--sam3"
    snapshot = repo / "snapshots" / commit
    build(snapshot)
    if files is not None:
        for name in os.listdir(snapshot):
            if name not in files:
                os.remove(snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return str(snapshot)


def test_offline_uses_the_cache_and_names_what_is_missing(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from sam3_ops.testing import build_tiny_checkpoint

    monkeypatch.setattr(checkpoint, "_resolved", {})
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError) as raised:
        download_checkpoint("facebook/sam3")
    assert "not in the local Hugging Face cache" in str(raised.value) and "HF_HUB_OFFLINE" in str(raised.value)

    snapshot = _hub_cache(tmp_path / "hub", build_tiny_checkpoint)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert download_checkpoint("facebook/sam3") == snapshot

    # a cached repo whose snapshot lacks the weights: named, not "gated"
    monkeypatch.setattr(checkpoint, "_resolved", {})
    shutil.rmtree(tmp_path / "hub")
    _hub_cache(tmp_path / "hub", build_tiny_checkpoint, files={"config.json", "processor_config.json"})
    with pytest.raises(ModelLoadError, match="has no model.safetensors") as raised:
        download_checkpoint("facebook/sam3")
    assert "gated" not in str(raised.value)


def test_a_cached_repo_that_is_not_sam3_is_named(tmp_path, monkeypatch):
    from huggingface_hub import constants

    def build(path):
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps({"model_type": "bert"}))

    monkeypatch.setattr(checkpoint, "_resolved", {})
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _hub_cache(tmp_path / "hub", build)
    with pytest.raises(
        ModelLoadError, match="'facebook/sam3' on the hub is not a SAM3 checkpoint: its model_type is 'bert'"
    ):
        download_checkpoint("facebook/sam3")


def test_local_directories_are_checked_and_returned(tiny_checkpoint, tmp_path):
    assert download_checkpoint(tiny_checkpoint) == tiny_checkpoint
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="not a SAM3 checkpoint"):
        download_checkpoint(str(tmp_path))


# -- incomplete local checkpoints: refused by name before anything is written ---------------------


def _copy(tiny_checkpoint, tmp_path, drop=(), truncate=None) -> str:
    target = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, target)
    for name in drop:
        os.remove(target / name)
    if truncate:
        size = os.path.getsize(target / truncate)
        with open(target / truncate, "r+b") as handle:
            handle.truncate(size // 2)
    return str(target)


def test_a_truncated_safetensors_file_is_named_not_called_gated(tiny_checkpoint, tmp_path):
    import sam3_ops

    path = _copy(tiny_checkpoint, tmp_path, truncate="model.safetensors")
    for mode in ("text", "boxes"):
        with pytest.raises(ModelLoadError) as raised:
            sam3_ops.get_engine(path, device="cpu").load(mode)
        message = str(raised.value)
        assert "model.safetensors is truncated" in message and "gated" not in message and "hf auth" not in message
    with open(os.path.join(path, "model.safetensors"), "r+b") as handle:
        handle.truncate(4)  # not even a header
    with pytest.raises(ModelLoadError, match="model.safetensors is corrupt or truncated"):
        download_checkpoint(path)


@pytest.mark.parametrize("mode", ["text", "exemplars"])
def test_a_checkpoint_without_tokenizer_files_is_refused_for_text_modes(tiny_checkpoint, tmp_path, mode):
    from sam3_ops.core.engine import Sam3Engine

    path = _copy(tiny_checkpoint, tmp_path, drop=("tokenizer.json", "tokenizer_config.json"))
    with pytest.raises(ModelLoadError, match="has no tokenizer files .* text prompts"):
        Sam3Engine(path, device="cpu").load(mode)
    # boxes and points read no text: the same directory serves them
    Sam3Engine(path, device="cpu").load("boxes")


def test_a_checkpoint_without_processor_settings_is_refused(tiny_checkpoint, tmp_path):
    from sam3_ops.core.engine import Sam3Engine

    path = _copy(tiny_checkpoint, tmp_path, drop=("processor_config.json",))
    with pytest.raises(ModelLoadError, match="has no image processor settings"):
        Sam3Engine(path, device="cpu").load("boxes")


def test_video_text_tracking_refuses_a_checkpoint_without_tokenizer(tiny_checkpoint, tmp_path):
    from sam3_ops.core.video import Sam3VideoEngine

    path = _copy(tiny_checkpoint, tmp_path, drop=("tokenizer.json",))
    with pytest.raises(ModelLoadError, match="has no tokenizer files"):
        Sam3VideoEngine(path, device="cpu").load("text")
    Sam3VideoEngine(path, device="cpu").load("prompts")


def test_a_refused_checkpoint_writes_nothing(dataset, tiny_checkpoint, tmp_path):
    import sam3_ops

    path = _copy(tiny_checkpoint, tmp_path, drop=("tokenizer.json",))
    with pytest.raises(ModelLoadError, match="no tokenizer files"):
        sam3_ops.segment(dataset, "refused", model_path=path, prompts=["cat"], device="cpu", num_workers=0)
    assert not dataset.has_sample_field("refused") and "refused" not in dataset.list_runs()


def test_the_tracker_loads_without_the_model_type_warning(tiny_checkpoint, capfd):
    from transformers.utils import logging as hf_logging

    from sam3_ops.core.checkpoint import load_tracker

    hf_logging.set_verbosity_warning()
    load_tracker(tiny_checkpoint)
    assert "to instantiate a model of type" not in capfd.readouterr().err


def test_checkpoint_problem_classifies_without_downloading(online, fake_hub, tiny_checkpoint, tmp_path):
    """What forms call: the same causes, found without downloading or loading any weights."""
    from sam3_ops.core.checkpoint import checkpoint_problem

    assert checkpoint_problem(tiny_checkpoint) is None
    assert "is truncated" in checkpoint_problem(_copy(tiny_checkpoint, tmp_path, truncate="model.safetensors"))
    online(fake_hub["endpoint"])
    fake_hub.update(status=401, code="GatedRepo")
    assert "gated" in checkpoint_problem("facebook/sam3", token=TOKEN)
    fake_hub.update(status=404, code="RepoNotFound")
    assert "not found" in checkpoint_problem("someone/nothing")
    online(f"http://127.0.0.1:{_closed_port()}")
    assert "unreachable" in checkpoint_problem("facebook/sam3")
