"""Reading a tool-call parser's output in tests: calls by name, and a feed split into pieces."""

from __future__ import annotations

import json
from typing import Any

from api.tool_parsers import ToolParserStream


def named(calls: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


def streamed(
    parser: ToolParserStream, pieces: list[str]
) -> tuple[str, list[dict[str, Any]], bool, int]:
    """Content, calls, whether a call was made, and how many feeds produced content."""
    content, calls, called, content_feeds = "", [], False, 0
    for i, piece in enumerate(pieces):
        fields, called = parser.feed(piece, final=i == len(pieces) - 1)
        content += fields.get("content", "")
        content_feeds += "content" in fields
        calls += fields.get("tool_calls", [])
    return content, calls, called, content_feeds
