"""Real gateway servers for the API tests: uvicorn in a thread, or `exo-actor start` as a process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from exo_actor.api import GatewayConfig, create_app
from exo_actor.config import NodeConfig
from exo_actor.node import Node
from exo_actor.server import bind_socket


@dataclass
class RunningServer:
    url: str
    node: Node | None = None
    process: subprocess.Popen[str] | None = None


def wait_ready(url: str, timeout: float = 120.0, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.get(f"{url}/healthz", timeout=2)
            if r.status_code == 200 and r.json()["state"] == "ready":
                return
            if r.status_code == 200 and r.json()["state"] == "failed":
                raise RuntimeError(f"the model failed to load: {httpx.get(f'{url}/v1/cluster', headers=headers).text}")
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not become ready in {timeout} s")


@contextlib.contextmanager
def thread_server(
    model: str | Path, gateway: GatewayConfig | None = None, max_concurrent: int = 8, start_node: bool = True
) -> Iterator[RunningServer]:
    """uvicorn serving create_app(...) on a free loopback port, in a thread of this process."""
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    node = Node(NodeConfig(model=str(model), max_concurrent=max_concurrent, address=f"127.0.0.1:{port}"))
    if start_node:
        node.start()
    server = uvicorn.Server(uvicorn.Config(create_app(node, gateway), log_level="warning"))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # not the main thread
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        if start_node:
            wait_ready(url)
        else:
            while not server.started:
                time.sleep(0.05)
        yield RunningServer(url, node=node)
    finally:
        server.should_exit = True
        thread.join(10)
        node.stop()
        sock.close()


_HANDED_OUT: set[int] = set()


def _claim(port: int) -> bool:
    """Under pytest-xdist (`tox -e fast` runs the fast tier on two workers), claim `port` for this worker:
    the workers of one run share a folder where each claim is a file created exclusively, so no two
    workers hand out the same port. Always True when not under xdist."""
    folder = _claims()
    if folder is None:
        return True
    folder.mkdir(exist_ok=True)
    try:
        os.close(os.open(folder / str(port), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    _CLAIMED.append(port)
    return True


def _claims() -> Path | None:
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    return Path(tempfile.gettempdir()) / f"exo-actor-ports-{run}" if run else None


def release_ports() -> None:
    """Drop this worker's claims (tests/conftest.py calls it when an xdist worker's session ends)."""
    folder = _claims()
    if folder is None:
        return
    for port in _CLAIMED:
        (folder / str(port)).unlink(missing_ok=True)
    _CLAIMED.clear()
    with contextlib.suppress(OSError):
        folder.rmdir()  # the last worker to leave removes the folder


_CLAIMED: list[int] = []


def free_port() -> int:
    """A free loopback port, never one this process handed out before: the kernel may give the same
    free port twice, and a ring's gateway and another node's actor socket once collided that way.
    Under xdist, never one another worker of the run handed out either (_claim)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            if _claim(port):
                return port


@contextlib.contextmanager
def process_server(*args: str) -> Iterator[RunningServer]:
    """`exo-actor start ARGS` as a separate process on a free loopback port: a node on its own (--discovery
    manual, so no beacons, whatever the environment says; ARGS may override it)."""
    port = free_port()
    cmd = [sys.executable, "-m", "exo_actor.cli", "start", "--api-host", "127.0.0.1", "--api-port", str(port)]
    cmd += ["--discovery", "manual", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url)
        yield RunningServer(url, process=proc)
    finally:
        stop_processes([proc])


@contextlib.contextmanager
def loopback_ring(
    folder: Path,
    memories: list[str],
    env: dict[str, str] | None = None,
    ready_timeout: float = 300,
    extra: tuple[str, ...] = (),
    per_node: list[tuple[str, ...]] | None = None,
    ports: list[int] | None = None,
    per_node_env: list[dict[str, str]] | None = None,
    api_ports: list[int] | None = None,
) -> Iterator[dict[str, list]]:
    """`exo-actor start` processes node0..N-1 on loopback with manual peers (--discovery manual: no beacons)
    and the given --memory (GiB); `extra` flags go to every node, per_node[i] to node i, per_node_env[i]
    into node i's environment."""
    ports, api = ports or [free_port() for _ in memories], api_ports or [free_port() for _ in memories]
    advertised = [next((f[j + 1] for j, x in enumerate(f) if x == "--advertise"), None) for f in per_node or []]
    peers = [a or f"127.0.0.1:{p}" for a, p in zip(advertised or [None] * len(ports), ports)]
    (folder / "peers.toml").write_text(f"peers = {json.dumps(peers)}\n")
    procs = []
    for i, mem in enumerate(memories):
        cmd = [
            sys.executable,
            "-m",
            "exo_actor.cli",
            "start",
            "--node-id",
            f"node{i}",
            "--host",
            "127.0.0.1",
            "--port",
            str(ports[i]),
            "--api-host",
            "127.0.0.1",
            "--api-port",
            str(api[i]),
            "--peers",
            str(folder / "peers.toml"),
            "--discovery",
            "manual",
            "--memory",
            mem,
            *extra,
            *(per_node[i] if per_node else ()),
        ]
        with open(folder / f"node{i}.log", "w") as log:  # the child keeps its own copy of the descriptor
            node_env = {**(env or os.environ), **(per_node_env[i] if per_node_env else {})}
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=node_env))
    urls = [f"http://127.0.0.1:{p}" for p in api]
    try:
        for url in urls:
            wait_ready(url, timeout=ready_timeout)
        yield {"urls": urls, "procs": procs, "ports": ports}
    finally:
        stop_processes(procs)


def cluster_info(url: str) -> dict[str, Any]:
    """GET URL/v1/cluster."""
    info: dict[str, Any] = httpx.get(url + "/v1/cluster", timeout=10).json()
    return info


def wait_plan(urls: list[str], nodes: list[str], timeout: float = 60) -> None:
    """Until every gateway in `urls` is ready on a plan of exactly `nodes`, in that order."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            infos = [cluster_info(u) for u in urls]
            if all(i["state"] == "ready" and [p["node"] for p in i["plan"]] == nodes for i in infos):
                return
        time.sleep(0.2)  # three GETs of /v1/cluster a poll: cheap; a re-plan is seen sooner
    plans = []
    for u in urls:
        with contextlib.suppress(httpx.HTTPError):
            plans.append([p["node"] for p in cluster_info(u)["plan"]])
    raise AssertionError(f"the plan did not become {nodes} within {timeout} s: {plans}")


def restart_node(ring: dict[str, list[Any]], i: int, log: Path) -> None:
    """Start node i of a loopback_ring again with its original command (after a test killed it); the
    ring's teardown stops the new process."""
    old = ring["procs"][i]
    if old.poll() is None:
        old.kill()
    old.wait()
    with open(log, "w") as out:
        ring["procs"][i] = subprocess.Popen(old.args, stdout=out, stderr=subprocess.STDOUT)


def revive(ring: dict[str, list[Any]], logs: Path) -> None:
    """Resume (SIGCONT) every node of a loopback_ring and start again the ones that exited."""
    for i, proc in enumerate(ring["procs"]):
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
        else:
            restart_node(ring, i, logs / f"node{i}-revived.log")


def stop_processes(procs: list[subprocess.Popen], timeout: float = 15) -> None:  # type: ignore[type-arg]
    """SIGTERM every process, then wait up to `timeout` s each (SIGKILL the ones still running)."""
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
