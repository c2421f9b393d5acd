"""The "llama3_json" tool-call parser: Llama 3.1-3.3's JSON tool calls.

Offered tools (by its chat template), a Llama 3 model answers a call with the
whole message as one JSON object, `{"name": ..., "parameters": {...}}`,
several separated by ";", sometimes after the `<|python_tag|>` token: an
answer that begins with "{" (or the tag) is read as calls when it ends
(`api/whole_answer_tool_parser.py`); anything else streams as content at once.
"""

from __future__ import annotations

import json
from typing import Any

from api.tool_call_json import call_from_object
from api.whole_answer_tool_parser import WholeAnswerCallStream

PYTHON_TAG = "<|python_tag|>"
_DECODER = json.JSONDecoder()


class Llama3JsonStream(WholeAnswerCallStream):
    openers = ("{", PYTHON_TAG)

    def read_calls(self, text: str) -> list[dict[str, Any]] | None:
        return _calls(text)


def _calls(text: str) -> list[dict[str, Any]] | None:
    """Every call in `text` (objects separated by ";" or whitespace), or None unless the
    whole text is calls."""
    body = text.strip()
    if body.startswith(PYTHON_TAG):
        body = body[len(PYTHON_TAG) :]
    calls: list[dict[str, Any]] = []
    position = 0
    while True:
        while position < len(body) and (body[position].isspace() or body[position] == ";"):
            position += 1
        if position == len(body):
            return calls or None
        try:
            data, position = _DECODER.raw_decode(body, position)
        except (ValueError, RecursionError):
            return None
        call = call_from_object(data)
        if call is None:
            return None
        calls.append(call)
