"""The finished conversations of /v1/responses, kept in memory so `previous_response_id` can continue them.

Bounded twice: at most `max_responses` entries and at most `max_tokens` tokens over all entries (each entry
counts the tokens of its whole conversation: prompt plus output). The least recently used entries go first;
a conversation larger than the whole token budget is not kept at all. Nothing survives a restart.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredResponse:
    """A finished response's conversation in chat-message form (without its `instructions`, which OpenAI does
    not carry over to the next turn), and its size in tokens."""

    messages: tuple[dict[str, Any], ...]
    tokens: int


class ResponseStore:
    """An LRU of finished responses by id, bounded by count and by total tokens."""

    def __init__(self, max_responses: int = 512, max_tokens: int = 2_000_000) -> None:
        if max_responses < 1 or max_tokens < 1:
            raise ValueError("a response store needs room for at least one response and one token")
        self.max_responses, self.max_tokens = max_responses, max_tokens
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()
        self._tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, response_id: object) -> bool:
        return response_id in self._entries

    @property
    def tokens(self) -> int:
        """Tokens held over all entries."""
        return self._tokens

    def get(self, response_id: str) -> StoredResponse | None:
        """The stored response (now the most recently used), or None if unknown or evicted."""
        entry = self._entries.get(response_id)
        if entry is not None:
            self._entries.move_to_end(response_id)
        return entry

    def put(self, response_id: str, messages: list[dict[str, Any]], tokens: int) -> bool:
        """Keep a finished response, evicting the least recently used ones to stay in bounds; False if it
        alone is larger than the token budget (then it is not kept)."""
        if tokens > self.max_tokens:
            log.info(
                "response %s (%d tokens) exceeds the store's budget of %d tokens", response_id, tokens, self.max_tokens
            )
            return False
        old = self._entries.pop(response_id, None)
        if old is not None:
            self._tokens -= old.tokens
        self._entries[response_id] = StoredResponse(tuple(messages), tokens)
        self._tokens += tokens
        while len(self._entries) > self.max_responses or self._tokens > self.max_tokens:
            _, evicted = self._entries.popitem(last=False)
            self._tokens -= evicted.tokens
        return True
