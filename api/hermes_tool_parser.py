"""The "hermes" tool-call parser: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
blocks, as Hermes 2/3, Qwen 2.5/3 and the many models trained on that format
write them, anywhere in the text. A block that is not valid JSON with a string
`name` stays in the text, so nothing the model wrote is lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from api.tool_call_json import TextAroundCalls, call_from_json, marker_prefix_len

START = "<tool_call>"
END = "</tool_call>"


@dataclass
class HermesStream:
    """Incrementally: text goes out as content until a block begins; each block
    goes out as one tool-call delta once closed. A suffix that could begin `<tool_call>`
    is held back, so no fragment of the tag reaches the client as content."""

    calls: int = 0
    _around_calls: TextAroundCalls = field(default_factory=TextAroundCalls)
    pending: str = ""  # held-back text: a possible tag start, or an open block
    in_block: bool = False
    _block: str = ""  # the open block's text so far

    def feed(self, text: str, final: bool) -> tuple[dict[str, Any], bool]:
        """Delta fields for this text, and whether any tool call was made so far.

        Text this feed holds after one of its calls comes under AFTER_CALLS, so the
        caller can send it after the calls, in the order the model wrote them."""
        buffer = self.pending + text
        self.pending = ""
        before: list[str] = []
        after: list[str] = []
        deltas: list[dict[str, Any]] = []
        while buffer:
            content = after if deltas else before
            if not self.in_block:
                start = buffer.find(START)
                if start < 0:
                    keep = marker_prefix_len(buffer, START) if not final else 0
                    content.append(buffer[: len(buffer) - keep])
                    self.pending = buffer[len(buffer) - keep :]
                    break
                content.append(buffer[:start])
                buffer = buffer[start + len(START) :]
                self.in_block = True
                self._block = ""
                continue
            self._block += buffer  # END may straddle two feeds: search the whole block
            end = self._block.find(END)
            if end < 0:
                break
            buffer = self._block[end + len(END) :]
            self._block = self._block[:end]
            self.in_block = False
            self._close_block(content, deltas)
        if final and self.in_block:
            self.in_block = False
            self._close_block(after if deltas else before, deltas, closed=False)
        return self._around_calls.fields(before, after, deltas, final), self.calls > 0

    def _close_block(
        self, content: list[str], deltas: list[dict[str, Any]], closed: bool = True
    ) -> None:
        block, self._block = self._block, ""
        call = call_from_json(block.strip())
        if call is None:  # not a call after all: the text goes out as it was written
            content.append(START + block + (END if closed else ""))
            return
        deltas.append({"index": self.calls, **call})
        self.calls += 1
