"""Incremental detokenization: text deltas that never split a UTF-8 character or repeat text."""

from __future__ import annotations

from .tokenizer import TextTokenizer


class IncrementalDetokenizer:
    """Turns a growing token sequence into text deltas.

    Decodes a small window of recent tokens twice (with and without the new ones) and emits the
    difference; while the window ends in an incomplete UTF-8 sequence (decoded as U+FFFD) it waits
    for more tokens. This is the scheme used by TGI and vLLM.
    """

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self.tok = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def add(self, token_id: int) -> str:
        """Append one token; return the newly completed text (possibly empty)."""
        self.ids.append(token_id)
        prefix = self.tok.decode(self.ids[self.prefix_offset : self.read_offset])
        full = self.tok.decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            delta = full[len(prefix) :]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return delta
        return ""

    def flush(self) -> str:
        """Text still held back at the end; a character cut off by the end is dropped, not broken."""
        prefix = self.tok.decode(self.ids[self.prefix_offset : self.read_offset])
        full = self.tok.decode(self.ids[self.prefix_offset :])
        self.read_offset = len(self.ids)
        return full[len(prefix) :].rstrip("\ufffd") if len(full) > len(prefix) else ""
