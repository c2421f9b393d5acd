"""The "granite" tool-call parser: IBM Granite 3's JSON list of calls.

Offered tools, a Granite 3 model answers a call with the whole message as a JSON
list, `[{"name": ..., "arguments": {...}}, ...]`, after `<|tool_call|>` (3.0, a
special token, so it may also arrive already dropped) or `<tool_call>` (3.1 and
later). An answer that begins with either, or with "[", is read as calls when it
ends (`api/whole_answer_tool_parser.py`); anything else streams as content at
once, and held text that is not all calls goes out unchanged.
"""

from __future__ import annotations

from typing import Any

from api.tool_call_json import json_call_list
from api.whole_answer_tool_parser import WholeAnswerCallStream

TOOL_CALL_TOKEN = "<|tool_call|>"  # Granite 3.0
TOOL_CALL_TAG = "<tool_call>"  # Granite 3.1+


class GraniteStream(WholeAnswerCallStream):
    openers = ("[", TOOL_CALL_TOKEN, TOOL_CALL_TAG)

    def read_calls(self, text: str) -> list[dict[str, Any]] | None:
        body = text.strip().removeprefix(TOOL_CALL_TOKEN).lstrip()
        return json_call_list(body.removeprefix(TOOL_CALL_TAG).lstrip())
