"""A node: this device's model, pipeline and RouterActor, and what it reports about itself.

`Node` serves the whole model in this process. `cluster.ClusterNode` (a LAN ring) and
`ray_backend.RayNode` (shards as Ray actors) are the other backends; the gateway and `serve()` use
any of them through the same interface: start_async / stop_async, ready_router, cluster_info.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .actors.router import RouterActor
from .config import NodeConfig
from .errors import ExoError
from .runtime.local import load_local
from .runtime.memory import release_freed_memory
from .speculative import Speculation
from .storage.downloads import Progress
from .storage.registry import load_registry
from .weights import ModelFiles

log = logging.getLogger(__name__)


def total_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def start_router(
    config: NodeConfig, files: ModelFiles, pipeline: Any, speculation: Speculation | None, micro_batches: int = 1
) -> RouterActor:
    """A started RouterActor driving `pipeline` with this node's limits and caches; `micro_batches` > 1
    only for a pipeline that may run batches from several threads at once (a ring of nodes)."""
    router = RouterActor(
        pipeline,
        files.tokenizer,
        files.args.max_position_embeddings,
        config.max_concurrent,
        speculation,
        config.prefix_cache_tokens(files.args),
        micro_batches,
    )
    router.start()
    return router


class ModelLoadingError(ExoError):
    """The model is not ready (still loading, or it failed to load)."""


class NodeState(StrEnum):
    """Where a node is on its way to serving (its `detail` says more, e.g. which layers it loads)."""

    STARTING = "starting"
    CONNECTING = "connecting"  # the Ray driver reaching Ray
    DOWNLOADING = "downloading"
    LOADING = "loading"
    WAITING_FOR_PEERS = "waiting for peers"  # --wait-for-peers not met yet
    NO_PLAN = "no plan"  # the nodes heard so far cannot hold the model
    LOADING_DRAFT = "loading the draft model"
    RECOVERING = "recovering"  # the Ray driver waiting for Ray to restart a shard
    READY = "ready"
    FAILED = "failed"


@dataclass
class Node:
    """One device: loads its model in the background, then serves it through a RouterActor."""

    config: NodeConfig
    node_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: NodeState = NodeState.STARTING  # written by one thread: the loader's, or the event loop
    detail: str | None = None  # more about the state ("1/2 peers", "layers 0-14"), shown beside it
    error: str | None = None
    files: ModelFiles | None = None
    router: RouterActor | None = None
    plan: list[tuple[int, int]] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    download: Progress = field(default_factory=Progress)  # the Hub download of this node's files, if any

    def __post_init__(self) -> None:
        self.download.listener = self._on_download
        self._download_logged = 0.0

    def set_state(self, state: NodeState, detail: str | None = None) -> None:
        self.state, self.detail = state, detail

    def fail(self, error: str) -> None:
        self.state, self.detail, self.error = NodeState.FAILED, None, error

    @property
    def status(self) -> str:
        """The state with its detail, for messages and logs."""
        return f"{self.state} ({self.detail})" if self.detail else str(self.state)

    def _on_download(self, p: Progress) -> None:
        """Called by a download on its thread (here the loader's, which owns the state)."""
        self._follow_download(p)
        self._log_download(p)

    def _follow_download(self, p: Progress) -> None:
        if p.state == "downloading" and self.state == NodeState.LOADING:
            self.set_state(NodeState.DOWNLOADING, self.detail)
        elif p.state != "downloading" and self.state == NodeState.DOWNLOADING:
            self.set_state(NodeState.LOADING, self.detail)

    def _log_download(self, p: Progress) -> None:
        """Log a download's progress every few seconds (the dashboard and /v1/cluster show it live)."""
        now = time.monotonic()
        if p.state == "downloading" and now - self._download_logged < 5.0:
            return
        self._download_logged = now
        if p.state == "downloading" and p.total_bytes:
            log.info(
                "downloading %s: %.0f%% of %.1f MB, %.1f MB/s",
                p.repo,
                100 * p.done_bytes / p.total_bytes,
                p.total_bytes / 1e6,
                p.speed() / 1e6,
            )

    @property
    def model_id(self) -> str:
        return self.config.model

    def model_aliases(self) -> set[str]:
        """Names a client may use for the served model."""
        names = {self.config.model}
        entry = load_registry().get(self.config.model)
        if entry is not None:
            names.add(entry.hf_repo)
        if self.files is not None:
            names.add(self.files.path.name)
        return names

    @property
    def in_flight(self) -> int:
        """Requests being generated on this node's rings."""
        return self.router.in_flight if self.router else 0

    @property
    def messages_dropped(self) -> int:
        """Malformed messages this node's actor socket received (none without a network)."""
        return 0

    def messages_received(self) -> dict[str, tuple[int, int]]:
        """Per message kind, the messages this node's actor socket received and their bytes (none without
        a network)."""
        return {}

    @property
    def beacons_rejected(self) -> int:
        """Discovery beacons dropped for a missing or wrong signature (none without discovery)."""
        return 0

    async def start_async(self) -> None:
        """Load the model on a background thread (the API answers meanwhile)."""
        self.start()

    async def stop_async(self) -> None:
        self.stop()

    def start(self) -> None:
        self.set_state(NodeState.LOADING)
        threading.Thread(target=self._load, name="exo-load", daemon=True).start()

    def _load(self) -> None:
        try:
            files, pipeline = load_local(
                self.config.model,
                engine=self.config.engine,
                progress=self.download,
                quantize=self.config.quantize,
                device=self.config.device,
            )
            release_freed_memory()  # the dequantization's temporaries
            router = start_router(self.config, files, pipeline, self.config.speculation(files))
            self.files, self.router = files, router
            self.plan = [(s.start, s.end) for s in pipeline.shards]
            self.set_state(NodeState.READY)
            log.info("model %s ready (%d layers)", self.config.model, files.args.num_hidden_layers)
        except ExoError as exc:
            self.fail(str(exc))
            log.error("cannot load %s: %s", self.config.model, exc)

    def stop(self) -> None:
        if self.router is not None:
            self.router.stop()

    def ready_router(self) -> tuple[ModelFiles, RouterActor]:
        """The loaded model and router, or a ModelLoadingError saying why not."""
        if self.state == NodeState.FAILED:
            raise ModelLoadingError(f"the model failed to load: {self.error}")
        if self.files is None or self.router is None:
            raise ModelLoadingError(f"the model {self.config.model} is still loading; retry in a few seconds")
        return self.files, self.router

    def weights_bytes(self) -> int | None:
        """Bytes of model weights this node's engine holds (None before the model is loaded)."""
        shards = getattr(self.router.pipeline, "shards", None) if self.router is not None else None
        return sum(int(r.weight_bytes) for r in shards) if shards else None

    def kv_requests(self) -> int:
        """Requests whose KV caches this node holds (kept prefix-cache entries included)."""
        shards = getattr(self.router.pipeline, "shards", []) if self.router is not None else []
        return max((len(getattr(r, "caches", {})) for r in shards), default=0)

    def downloads_info(self) -> list[dict[str, Any]]:
        """Hub downloads this node made or is making (its own files only)."""
        if self.download.state == "idle":
            return []
        return [{"node": self.node_id, **self.download.snapshot()}]

    def cluster_info(self) -> dict[str, Any]:
        """The JSON of /v1/cluster: nodes, layer plan, ring state, loading progress."""
        n_layers = self.files.args.num_hidden_layers if self.files else None
        router = self.router
        return {
            "model": self.config.model,
            "state": self.state.value,
            "state_detail": self.detail,
            "error": self.error,
            "layers": n_layers,
            "nodes": [
                {
                    "id": self.node_id,
                    "address": self.config.address or socket.gethostname(),
                    "engine": self.config.engine,
                    "memory_bytes": total_memory_bytes(),
                    "weights_bytes": self.weights_bytes(),
                    "hostname": socket.gethostname(),
                }
            ],
            "plan": [{"node": self.node_id, "start": a, "end": b} for a, b in self.plan],
            "ring": {
                "state": self.state.value,
                "in_flight": router.in_flight if router else 0,
                "max_concurrent": self.config.max_concurrent,
                "tokens_per_second": round(router.tokens_per_second(), 2) if router else 0.0,
                "tokens_generated": router.tokens_generated if router else 0,
            },
            "speculative": router.speculation_info() if router else None,
            "prefix_cache": router.prefix_cache_info() if router else None,
            "batching": router.batching_info() if router else None,
            "downloads": self.downloads_info(),
            "kv_requests": self.kv_requests(),
            "uptime_seconds": round(time.time() - self.started_at, 1),
        }
