"""Fixtures: a tiny model served in-process, and the embedded SmolLM2 served by `exo-actor start`."""

from __future__ import annotations

import pytest

from tests.api.servers import process_server, thread_server
from tests.tiny import TinySpec, write_gguf


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("api") / "tiny.gguf"
    write_gguf(path, TinySpec(context=256))
    return path


@pytest.fixture(scope="module")
def tiny_server(tiny_gguf):
    with thread_server(tiny_gguf, max_concurrent=4) as srv:
        yield srv


@pytest.fixture(scope="session")
def smollm2_server(smollm2_path):
    with process_server("--model", "smollm2-135m") as srv:
        yield srv
