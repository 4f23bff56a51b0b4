"""DraftService: which node's DraftActor proposes tokens for this node's routers, and the draft this node
hosts for itself or for others (speculative decoding on a cluster).

Placement is partition.place_draft (pure): a router's own node when it has room for the draft, else the
node with the most free memory. A node loads the draft only when it serves some router; until it has,
its own routers wait (`pending`) rather than start without speculation and change behaviour later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from ..actors.draft import DraftActor, RemoteDrafter
from ..errors import ExoError
from ..partition import place_draft
from ..speculative import Drafter
from ..speculative.drafts import load_drafter
from ..transport.messages import Drafted
from ..transport.peers import PeerNetwork
from ..weights import ModelFiles

log = logging.getLogger(__name__)


class DraftService:
    def __init__(
        self,
        spec: str | None,
        node_id: str,
        net: PeerNetwork,
        files: ModelFiles,
        engine: str,
        draft_bytes: int,
        on_change: Callable[[], None],
    ) -> None:
        self.spec, self.node_id, self.net, self.files = spec, node_id, net, files
        self.engine, self.draft_bytes = engine, draft_bytes
        self.on_change = on_change  # called on the event loop when the draft finished loading (or failed)
        self.host: str | None = None  # the node whose DraftActor serves this node's routers
        self.actor: DraftActor | None = None  # the draft this node hosts, once loaded
        self._loading = False
        self._remotes: list[RemoteDrafter] = []

    @property
    def remote(self) -> bool:
        """A model draft placed on nodes (not off, not the n-gram drafter every router runs itself)."""
        return bool(self.spec) and self.spec != "ngram"

    def place(self, free_bytes: Mapping[str, int]) -> None:
        """Choose this node's draft host among the ring nodes with `free_bytes` to spare (those that offer
        the same draft), and start loading the draft here if this node serves any router."""
        if not self.remote:
            return
        self.host = place_draft(free_bytes, self.node_id, self.draft_bytes)
        if self.host is None:
            log.warning(
                "no node has %.0f MB free for draft %s: decoding without speculation", self.draft_bytes / 1e6, self.spec
            )
        serves = self.host == self.node_id or any(
            place_draft(free_bytes, router, self.draft_bytes) == self.node_id for router in free_bytes
        )
        if serves and self.actor is None and not self._loading:
            self._loading = True
            asyncio.ensure_future(self._load())

    async def _load(self) -> None:
        assert self.spec is not None
        loop = asyncio.get_running_loop()
        try:
            drafter = await loop.run_in_executor(None, load_drafter, self.spec, self.files, self.engine)
        except ExoError as exc:
            log.error("cannot load draft %s: %s; decoding without speculation", self.spec, exc)
            if self.host == self.node_id:
                self.host = None
            self.on_change()
            return
        finally:
            self._loading = False
        self.actor = DraftActor(drafter, self.net)
        log.info("draft %s loaded: serving proposals", self.spec)
        self.on_change()

    @property
    def pending(self) -> bool:
        """This node's routers wait for the draft: it is placed here and still loading."""
        return self.remote and self.host == self.node_id and self.actor is None

    def drafter(self) -> Drafter | None:
        """The drafter a new router of this node uses (None: decode without speculation)."""
        if not self.spec:
            return None
        if self.spec == "ngram":
            return load_drafter(self.spec, self.files)
        if self.host is None or self.pending:
            return None
        if self.host == self.node_id:
            return self.actor
        remote = RemoteDrafter(self.net, asyncio.get_running_loop(), self.host, self.spec)
        self._remotes.append(remote)
        return remote

    def on_drafted(self, msg: Drafted) -> None:
        for remote in self._remotes:
            remote.on_drafted(msg)

    def forget_routers(self) -> None:
        """The routers holding remote drafters are gone (a re-plan)."""
        self._remotes = []

    async def free(self, request_id: str) -> None:
        if self.actor is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.actor.free, request_id)

    def info(self) -> dict[str, Any] | None:
        if not self.spec:
            return None
        return {
            "model": self.spec,
            "host": self.host if self.spec != "ngram" else self.node_id,
            "hosted_here": self.actor is not None,
            "proposals_served": self.actor.served if self.actor else 0,
        }
