"""The "phi4_mini_json" tool-call parser: Phi-4-mini's `functools[...]` calls.

Offered tools, Phi-4-mini-instruct answers a call with the whole message as
`functools[{"name": ..., "arguments": {...}}, ...]`: an answer that begins with
`functools[` is read as calls when it ends (`api/whole_answer_tool_parser.py`),
the list parsed as JSON (so brackets inside arguments are fine, where vLLM's
regex stops at the first `]`); anything else streams as content at once.
"""

from __future__ import annotations

from typing import Any

from api.tool_call_json import json_call_list
from api.whole_answer_tool_parser import WholeAnswerCallStream

FUNCTOOLS = "functools"


class Phi4MiniJsonStream(WholeAnswerCallStream):
    openers = (FUNCTOOLS + "[",)

    def read_calls(self, text: str) -> list[dict[str, Any]] | None:
        return json_call_list(text.strip().removeprefix(FUNCTOOLS))
