"""A tiny GGUF model for the `run` tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny import TinySpec, write_gguf


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "tiny.gguf"
    write_gguf(path, TinySpec(context=48))
    return path
