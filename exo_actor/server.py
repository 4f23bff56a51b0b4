"""`exo-actor start`: this device's node plus, unless --no-api, the gateway served by uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator

import uvicorn

from .api import GatewayConfig, create_app
from .errors import ExoError
from .node import Node, NodeConfig
from .registry import resolve_model

log = logging.getLogger(__name__)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the API socket ourselves, so a busy port is one clear error (not a uvicorn exit)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ExoError(
            f"cannot listen on {host}:{port}: {exc.strerror} (is another server running? try --api-port)"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(node_config: NodeConfig, gateway: GatewayConfig | None, host: str, port: int) -> None:
    """Run until Ctrl-C / SIGTERM. gateway=None runs the node without the HTTP API."""
    resolve_model(node_config.model)  # an unknown model is an error now, not a log line later
    sock = bind_socket(host, port) if gateway is not None else None
    if sock is not None:
        node_config.address = f"{host}:{sock.getsockname()[1]}"
    node = Node(node_config)
    node.start()
    try:
        if sock is None:
            asyncio.run(_wait_for_signal())
            return
        if not gateway.api_key:  # type: ignore[union-attr]
            log.warning("no --api-key: anyone who can reach %s:%d can use this server", host, port)
        app = create_app(node, gateway)
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5, access_log=False)
        server = _Server(config)
        log.info("exo-actor gateway on http://%s:%d (OpenAI API at /v1, dashboard at /)", host, sock.getsockname()[1])
        asyncio.run(_serve_until_signal(server, sock))
    finally:
        node.stop()
        log.info("stopped")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: ours stops it, and the process then exits 0
    (uvicorn re-raises the signal after shutting down, which would skip our cleanup)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _serve_until_signal(server: uvicorn.Server, sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    await server.serve(sockets=[sock])


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
