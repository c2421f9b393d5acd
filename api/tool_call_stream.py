"""A forced tool call streamed as OpenAI streams one.

Named: the first chunk carries the call's id, type and name, later chunks
append to `function.arguments` as tokens arrive. Required: the JSON array is
read as it grows (`RequiredCallsReader`), so each call goes out once its name
is complete and its arguments follow piece by piece, several calls in turn.
"""

from __future__ import annotations

from typing import Any

from api.required_calls_reader import RequiredCallsReader
from api.tool_choice import ForcedToolCall, tool_call


class ToolCallStream:
    """One streamed choice's text, as deltas of its forced call(s)."""

    def __init__(self, forced: ForcedToolCall) -> None:
        self.forced = forced
        self.started = False
        self.reader = RequiredCallsReader()

    def delta(self, text: str, finish_reason: str | None) -> tuple[dict[str, Any], str | None]:
        """The chunk's delta fields (empty: nothing to say yet) and its finish_reason."""
        finish = finish_reason
        if finish == "stop":
            finish = self.forced.finish_reason
        if self.forced.mode == "named":
            if not text and (self.started or finish_reason is None):
                return {}, finish
            if self.started:
                return {"tool_calls": [{"index": 0, "function": {"arguments": text}}]}, finish
            self.started = True
            call = tool_call(self.forced.function_name or "", text)
            return {"tool_calls": [{"index": 0, **call}]}, finish
        deltas = self.reader.feed(text)
        return ({"tool_calls": deltas} if deltas else {}), finish
