"""Stop strings over streamed text: emit what is safe, hold back a possible stop-string prefix."""

from __future__ import annotations


class StopMatcher:
    """Feeds text deltas; returns text that can be shown and whether a stop string was hit."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.held = ""

    def feed(self, delta: str) -> tuple[str, bool]:
        """Returns (text safe to emit, stopped). After a stop, the stop string is not emitted."""
        if not self.stops:
            return delta, False
        text = self.held + delta
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            return text[: min(hits)], True
        keep = 0  # longest tail of text that could still grow into a stop string
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), keep, -1):
                if s.startswith(text[-n:]):
                    keep = n
                    break
        self.held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        """Text held back when generation ends without a stop string."""
        held, self.held = self.held, ""
        return held
