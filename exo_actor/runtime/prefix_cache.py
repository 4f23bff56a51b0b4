"""PrefixCache: which finished requests' KV caches are kept, and which one a new prompt can continue.

A chat's next turn sends the whole conversation again; its prompt starts with the previous turn's
prompt and reply. Instead of freeing a finished request's KV caches, the router keeps them (on every
shard) under the request's id, keyed by the token ids they hold. A new request whose prompt shares a
prefix with an entry adopts that entry's caches (they move to the new request, cut to the shared
length) and prefills only the rest. Entries are evicted least-recently-used first when the tokens
kept exceed the budget; the caller frees evicted entries on the shards.

Pure bookkeeping: no arrays, no sockets (the Pipeline moves and frees the caches).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache:
    def __init__(self, budget_tokens: int, min_reuse: int = 1) -> None:
        self.budget_tokens = budget_tokens
        self.min_reuse = max(1, min_reuse)
        self.entries: OrderedDict[str, tuple[int, ...]] = OrderedDict()  # request id -> cached tokens, LRU first
        self.hits = 0
        self.misses = 0
        self.reused_tokens = 0

    @property
    def tokens(self) -> int:
        return sum(len(t) for t in self.entries.values())

    def take(self, prompt: Sequence[int]) -> tuple[str | None, int]:
        """The entry sharing the longest prefix with `prompt` and that length, removed from the cache
        (its caches now belong to the new request). At least the prompt's last token is left to
        prefill, since its logits are needed. (None, 0) when nothing useful is cached."""
        best, best_len = None, 0
        for rid, tokens in self.entries.items():
            n = min(common_prefix(tokens, prompt), len(prompt) - 1)
            if n > best_len:
                best, best_len = rid, n
        if best is None or best_len < self.min_reuse:
            self.misses += 1
            return None, 0
        del self.entries[best]
        self.hits += 1
        self.reused_tokens += best_len
        return best, best_len

    def keep(self, request_id: str, tokens: Sequence[int]) -> list[str]:
        """Keep a finished request's caches holding `tokens`; returns the ids to free now (evicted
        entries, or this one if it alone exceeds the budget)."""
        if not tokens or len(tokens) > self.budget_tokens:
            return [request_id]
        self.entries[request_id] = tuple(tokens)
        self.entries.move_to_end(request_id)
        evicted = []
        while self.tokens > self.budget_tokens:
            rid, _ = self.entries.popitem(last=False)
            evicted.append(rid)
        return evicted

    def clear(self) -> list[str]:
        """Forget every entry; returns their ids to free."""
        ids = list(self.entries)
        self.entries.clear()
        return ids

    def info(self) -> dict[str, int]:
        return {
            "entries": len(self.entries),
            "tokens": self.tokens,
            "budget_tokens": self.budget_tokens,
            "hits": self.hits,
            "misses": self.misses,
            "reused_tokens": self.reused_tokens,
        }
