"""The shared stream of parsers for models that answer a call with the whole message.

Some model families (Llama 3.1-3.3's JSON calls, Llama 3.2/4's pythonic calls)
write a tool call as their entire answer, starting with a marker of their
syntax. So the first thing the model writes decides: an answer that begins
with one of the parser's openers is held back and read as calls when it ends;
anything else streams as content at once. Held text that is not all calls goes
out unchanged, so nothing the model wrote is lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class WholeAnswerCallStream:
    # What a call answer starts with (after leading whitespace).
    openers: ClassVar[tuple[str, ...]] = ()
    calls: int = 0
    mode: str = "undecided"  # "content" or "call" once the first text shows which
    _held: list[str] = field(default_factory=list)

    def read_calls(self, text: str) -> list[dict[str, Any]] | None:
        """Every call in the whole answer `text`, or None unless it is all calls."""
        raise NotImplementedError

    def feed(self, text: str, final: bool) -> tuple[dict[str, Any], bool]:
        """Delta fields for this text, and whether any tool call was made so far."""
        self._held.append(text)
        if self.mode == "undecided":
            start = "".join(self._held).lstrip()
            if start.startswith(self.openers):
                self.mode = "call"
            elif not final and (not start or any(o.startswith(start) for o in self.openers)):
                return {}, False  # too early to tell
            else:
                self.mode = "content"
        held = "".join(self._held)
        if self.mode == "content":
            self._held = []
            return ({"content": held} if held else {}), False
        if not final:
            return {}, False
        self._held = []
        calls = self.read_calls(held)
        if calls is None:  # text that looks like calls and is not: it is the answer
            return ({"content": held} if held else {}), False
        self.calls = len(calls)
        return {"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]}, True
