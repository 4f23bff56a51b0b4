"""ToolCallStreamer: however the text is split into deltas, the events add up to what parse_tool_calls
makes of the whole (the same content, the same calls); plain text streams before the end."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from exo_actor.tools import Tool, ToolCallStreamer, parse_tool_calls
from exo_actor.tools.stream import StreamEvent
from tests.tools.test_parse import texts

TOOLS = [Tool("get_weather"), Tool("get_time")]


def run(pieces: list[str], family: str) -> list[StreamEvent]:
    s = ToolCallStreamer(family, TOOLS)  # type: ignore[arg-type]
    events = [e for p in pieces for e in s.feed(p)]
    return events + s.finish()


def split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in zip(points, points[1:])]


@given(texts, st.lists(st.integers(0, 200), max_size=8), st.sampled_from(["hermes", "llama3", "generic"]))
def test_streamed_events_add_up_to_the_whole_parse(text, cuts, family):
    events = run(split(text, cuts), family)
    content, calls = parse_tool_calls(text, family, TOOLS)
    streamed = "".join(e.content for e in events if e.call is None)
    assert streamed == (content or "").strip() if calls else streamed == text.strip()
    got = [(e.call.name, e.call.arguments) for e in events if e.call is not None]
    assert got == [(c.name, c.arguments) for c in calls]
    assert [e.index for e in events if e.call is not None] == list(range(len(got)))


def test_plain_text_streams_before_the_end_and_a_marker_is_held():
    s = ToolCallStreamer("hermes", TOOLS)
    assert [e.content for e in s.feed("Hello there")] == ["Hello there"]
    assert s.feed(" <tool") == []  # may be the start of <tool_call>
    assert [e.content for e in s.feed("s are fun")] == [" <tools are fun"]


def test_a_hermes_call_goes_out_when_its_block_closes():
    s = ToolCallStreamer("hermes", TOOLS)
    assert s.feed('<tool_call>{"name": "get_time", ') == []
    events = s.feed('"arguments": {"zone": 2}}</tool_call>')
    assert [(e.call.name, e.call.arguments, e.index) for e in events if e.call] == [("get_time", {"zone": 2}, 0)]
    assert s.finish() == []


def test_an_answer_starting_with_json_is_held_to_the_end():
    s = ToolCallStreamer("generic", TOOLS)
    assert s.feed('{"name": "get_time",') == [] and s.feed(' "arguments": {}}') == []
    assert [e.call.name for e in s.finish() if e.call] == ["get_time"]
    s = ToolCallStreamer("generic", TOOLS)
    s.feed('{"answer": 42}')
    assert [e.content for e in s.finish()] == ['{"answer": 42}']
