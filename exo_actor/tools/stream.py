"""Tool calls out of a stream of text deltas: content streams until the output may be starting a call;
held text is then released as content or as calls, the same split parse_tool_calls makes of the whole."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .formats import HERMES_CLOSE, HERMES_OPEN, PYTHON_TAG, Family
from .parse import hermes_block, parse_tool_calls
from .spec import Tool, ToolCall


@dataclass(frozen=True)
class StreamEvent:
    """Either content text or one complete call (`index`: its position among the response's calls)."""

    content: str = ""
    call: ToolCall | None = None
    index: int = 0


def _held_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `marker`."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class ToolCallStreamer:
    """feed(delta) and finish() return StreamEvents. Hermes blocks are released as each one closes; a
    Llama 3 `<|python_tag|>` or an output that starts with `{` or `[` is held to the end and parsed whole.
    The streamed content has no leading or trailing whitespace (like the parsed content of an answer with
    calls; a non-streamed answer without calls keeps its text as it is)."""

    def __init__(self, family: Family, tools: Sequence[Tool]) -> None:
        self.family, self.tools = family, list(tools)
        self.names = {t.name for t in tools}
        self.marker = {"hermes": HERMES_OPEN, "llama3": PYTHON_TAG}.get(family)
        self.buf = ""
        self.mode = "text"  # text | block (inside <tool_call>) | tail (held to the end)
        self.started = False  # a non-whitespace character was seen
        self.pending_ws = ""  # whitespace after the last content: sent only if more content follows
        self.content_sent = False
        self.calls = 0

    def feed(self, text: str) -> list[StreamEvent]:
        self.buf += text
        out: list[StreamEvent] = []
        while self._step(out):
            pass
        return out

    def finish(self) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        buf, self.buf = self.buf, ""
        if self.mode == "block":
            self._block(buf, out)
        elif self.mode == "tail":
            content, calls = parse_tool_calls(buf, self.family, self.tools)
            self._content(content or "", out)
            self._calls(calls, out)
        else:
            self._content(buf, out)
        return out

    def _step(self, out: list[StreamEvent]) -> bool:
        """Consume what can be decided now; True if the state changed and there may be more to do."""
        if self.mode == "tail" or not self.buf:
            return False
        if self.mode == "block":
            end = self.buf.find(HERMES_CLOSE)
            if end < 0:
                return False
            inner, self.buf = self.buf[:end], self.buf[end + len(HERMES_CLOSE) :]
            self.mode = "text"
            self._block(inner, out, closed=True)
            return True
        if not self.started:
            stripped = self.buf.lstrip()
            if not stripped:
                return False
            self.started = True
            if stripped[0] in "{[":  # maybe a bare JSON call (generic, Llama 3): decided at the end
                self.mode = "tail"
                return False
        if self.marker is None:
            self._content(self.buf, out)
            self.buf = ""
            return False
        at = self.buf.find(self.marker)
        if at >= 0:
            self._content(self.buf[:at], out)
            if self.marker == HERMES_OPEN:
                self.buf, self.mode = self.buf[at + len(HERMES_OPEN) :], "block"
            else:
                self.buf, self.mode = self.buf[at:], "tail"
            return True
        keep = _held_suffix(self.buf, self.marker)
        self._content(self.buf[: len(self.buf) - keep], out)
        self.buf = self.buf[len(self.buf) - keep :]
        return False

    def _block(self, inner: str, out: list[StreamEvent], closed: bool = False) -> None:
        calls = hermes_block(inner, self.names)
        if calls is None:
            self._content(HERMES_OPEN + inner + (HERMES_CLOSE if closed else ""), out)
        else:
            self._calls(calls, out)

    def _calls(self, calls: list[ToolCall], out: list[StreamEvent]) -> None:
        for c in calls:
            out.append(StreamEvent(call=c, index=self.calls))
            self.calls += 1

    def _content(self, text: str, out: list[StreamEvent]) -> None:
        if not self.content_sent:
            text = text.lstrip()
        text = self.pending_ws + text
        body = text.rstrip()
        self.pending_ws = text[len(body) :]
        if body:
            out.append(StreamEvent(content=body))
            self.content_sent = True
