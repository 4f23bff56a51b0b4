"""`exo-actor start`: this device's node plus, unless --no-api, the gateway served by uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

import uvicorn

from .api import GatewayConfig, create_app
from .cluster import ClusterNode
from .config import ClusterConfig, NodeConfig
from .errors import ExoError
from .node import Node
from .storage.model_store import check_model

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from .config import RayConfig

log = logging.getLogger(__name__)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the API socket ourselves, so a busy port is one clear error (not a uvicorn exit)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose protocol says TCP (with 0, every
    # reused connection waited ~40 ms for Nagle + delayed ACK)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
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


def serve(
    node_config: NodeConfig,
    gateway: GatewayConfig | None,
    host: str,
    port: int,
    cluster: ClusterConfig | None = None,
    node_id: str | None = None,
    ray_config: RayConfig | None = None,
) -> None:
    """Run until Ctrl-C / SIGTERM. gateway=None runs the node without the HTTP API; cluster=None
    serves the whole model in this process (a cluster of one without sockets); ray_config runs the
    shards as Ray actors (the ray_backend package) with the router and the gateway here."""
    check_model(node_config.model)  # an unknown model is an error now, not a log line later
    sock = bind_socket(host, port) if gateway is not None else None
    if sock is not None:
        node_config.address = f"{host}:{sock.getsockname()[1]}"
    node: Node
    if ray_config is not None:
        from .ray_backend import RayNode  # the only package that imports ray

        node = RayNode(node_config, ray_config, node_id)
    elif cluster is not None:
        node = ClusterNode(node_config, cluster, node_id)
    else:
        node = Node(node_config)
    if node_id:
        node.node_id = node_id
    if gateway is not None and not gateway.api_key:
        log.warning("no --api-key: anyone who can reach %s:%d can use this server", host, port)
    asyncio.run(_main(node, gateway, sock))
    log.info("stopped")


async def _main(node: Node, gateway: GatewayConfig | None, sock: socket.socket | None) -> None:
    await node.start_async()
    try:
        if sock is None or gateway is None:
            await _wait_for_signal()
            return
        server = _Server(uvicorn_config(create_app(node, gateway), gateway))
        url = f"{gateway.scheme}://{node.config.address}"
        log.info("exo-actor gateway on %s (OpenAI API at /v1, dashboard at /)", url)
        await _serve_until_signal(server, sock)
    finally:
        await node.stop_async()


def uvicorn_config(app: ASGIApp, gateway: GatewayConfig) -> uvicorn.Config:
    """uvicorn's settings for the gateway: HTTPS with uvicorn's own TLS when it has a certificate
    (GatewayConfig checked the files, so a bad one never reaches uvicorn)."""
    return uvicorn.Config(
        app,
        ws="none",  # no WebSocket routes: uvicorn need not load a WebSocket stack (~5 MiB resident)
        log_level="warning",
        timeout_graceful_shutdown=5,
        ssl_certfile=gateway.tls_cert,
        ssl_keyfile=gateway.tls_key,
    )


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
