"""One request's tools as the model sees them: the prompt, the grammar a required call needs, and the
parse of the output (whole or streamed). Endpoints build a ToolUse from their own request shape."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..tokenizer import TextTokenizer
from .formats import Family, detect_family
from .grammar import call_grammar
from .parse import parse_tool_calls
from .render import prompt_ids_with_tools
from .spec import Tool, ToolCall, ToolChoice
from .stream import ToolCallStreamer


@dataclass(frozen=True)
class ToolUse:
    """`tools` offered under `choice`; `family` is the tool-call format of the model's chat template."""

    tools: Sequence[Tool] = ()
    choice: ToolChoice = field(default_factory=lambda: ToolChoice("none"))
    parallel: bool = True
    family: Family = "hermes"

    @classmethod
    def for_model(
        cls, tokenizer: TextTokenizer, tools: Sequence[Tool], choice: ToolChoice, parallel: bool = True
    ) -> ToolUse:
        return cls(tuple(tools), choice, parallel, detect_family(tokenizer.chat_template))

    @property
    def offered(self) -> bool:
        """Tools are in the prompt and the output is parsed for calls (tool_choice none: neither)."""
        return bool(self.tools) and self.choice.mode != "none"

    def prompt_ids(self, tokenizer: TextTokenizer, messages: Sequence[dict[str, Any]]) -> list[int]:
        return prompt_ids_with_tools(tokenizer, messages, self.tools, self.choice)

    def grammar(self) -> str | None:
        """The grammar decoding must follow (None: unconstrained, for none and auto)."""
        if not self.offered or not self.choice.constrained:
            return None
        return call_grammar(self.tools, self.choice, self.parallel, self.family)

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        if not self.offered:
            return text, []
        return parse_tool_calls(text, self.family, self.tools)

    def streamer(self) -> ToolCallStreamer | None:
        return ToolCallStreamer(self.family, self.tools) if self.offered else None
