"""Reading a tool-call parser's output in tests: calls by name, and a feed split into pieces."""

from __future__ import annotations

import json
from typing import Any

import openai

from api.tool_parsers import ToolParserStream

TOOLS = [
    {"type": "function", "function": {"name": "get_weather"}},
    {"type": "function", "function": {"name": "get_time"}},
]
MESSAGES = [{"role": "user", "content": "Weather in Paris, and the time?"}]


def named(calls: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


def calls_through_the_sdk(
    client: openai.OpenAI, model: str, expected: list[tuple[str, Any]]
) -> None:
    """With TOOLS offered, the whole answer and the stream both carry `expected` calls
    (the worker is scripted to write them)."""
    full = client.chat.completions.create(model=model, messages=MESSAGES, tools=TOOLS)
    choice = full.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert named([c.model_dump() for c in choice.message.tool_calls or []]) == expected
    chunks = list(
        client.chat.completions.create(model=model, messages=MESSAGES, tools=TOOLS, stream=True)
    )
    deltas = [
        d.model_dump() for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []
    ]
    assert named(deltas) == expected


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
