"""tool_choice "auto" with --tool-call-parser hermes: calls read out of the model's own text,
whole or streamed in any pieces, and text that only looks like a call kept as text."""

from __future__ import annotations

import json
import random
from typing import Any

import openai
import pytest

from api.chat_generation import _first_call_only, chat_message
from api.hermes_tool_parser import HermesStream
from api.tool_call_json import AFTER_CALLS, ParsedOutput
from api.tool_parsers import parse_tool_calls

from .conftest import MODEL, Stack

WEATHER = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
CLOCK = '{"name": "get_time", "arguments": {}}'
TWO_CALLS = f"Let me look.\n<tool_call>\n{WEATHER}\n</tool_call>\n<tool_call>{CLOCK}</tool_call>"


def names_and_arguments(calls: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


EXPECTED_CALLS = [
    ("get_weather", {"city": "Paris", "unit": "celsius"}),
    ("get_time", {}),
]


def test_calls_and_the_text_before_them_are_separated() -> None:
    parsed = parse_hermes(TWO_CALLS)
    assert parsed.content == "Let me look.\n"  # as written, as the stream sends it
    assert names_and_arguments(parsed.tool_calls) == EXPECTED_CALLS
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in parsed.tool_calls)
    assert len({c["id"] for c in parsed.tool_calls}) == 2


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        ("Just an answer, a < b.", "Just an answer, a < b.", []),
        (f"<tool_call>{CLOCK}</tool_call>", None, [("get_time", {})]),
        (f"<tool_call>{CLOCK}", None, [("get_time", {})]),  # EOS before the closing tag
        ('<tool_call>{"name": "f", "parameters": {"x": 1}}</tool_call>', None, [("f", {"x": 1})]),
        (
            '<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>',
            None,
            [("f", {"x": 1})],
        ),
        ("<tool_call>not json</tool_call>", "<tool_call>not json</tool_call>", []),
        # arguments a client could not call with: not a call
        *[
            (f"<tool_call>{block}</tool_call>", f"<tool_call>{block}</tool_call>", [])
            for block in ('{"name": "f", "arguments": [1]}', '{"name": "f", "arguments": "oops"}')
        ],
        (
            '<tool_call>{"arguments": {}}</tool_call>',
            '<tool_call>{"arguments": {}}</tool_call>',
            [],
        ),
        (f"<tool_call>{CLOCK}</tool_call> and done", " and done", [("get_time", {})]),
    ],
)
def test_whole_outputs(text: str, content: str | None, calls: list) -> None:
    parsed = parse_hermes(text)
    assert parsed.content == content
    assert names_and_arguments(parsed.tool_calls) == calls


def streamed(pieces: list[str]) -> tuple[str, list[dict[str, Any]], bool]:
    parser = HermesStream()
    content, calls, called = "", [], False
    for i, piece in enumerate(pieces):
        fields, called = parser.feed(piece, final=i == len(pieces) - 1)
        content += fields.get("content", "") + fields.get(AFTER_CALLS, "")
        calls += fields.get("tool_calls", [])
    return content, calls, called


def test_a_stream_split_anywhere_gives_the_same_calls_and_no_tag_fragments() -> None:
    for cut in range(len(TWO_CALLS) + 1):
        content, calls, called = streamed([TWO_CALLS[:cut], TWO_CALLS[cut:]])
        assert content.strip() == "Let me look.", cut
        assert names_and_arguments(calls) == EXPECTED_CALLS, cut
        assert [c["index"] for c in calls] == [0, 1] and called
    content, calls, _ = streamed(list(TWO_CALLS))  # one character at a time
    assert content.strip() == "Let me look." and names_and_arguments(calls) == EXPECTED_CALLS


def test_text_after_a_call_in_one_feed_is_kept_apart_to_follow_the_calls() -> None:
    fields, called = HermesStream().feed(f"Look.<tool_call>{WEATHER}</tool_call> Done.", True)
    assert called and fields["content"] == "Look." and fields[AFTER_CALLS] == " Done."
    assert [c["function"]["name"] for c in fields["tool_calls"]] == ["get_weather"]
    whole = parse_hermes(f"Look.<tool_call>{WEATHER}</tool_call> Done.")
    assert whole.content == "Look. Done."
    fields, _ = HermesStream().feed(f"<tool_call>{WEATHER}</tool_call>\n", True)
    assert AFTER_CALLS not in fields and "content" not in fields


@pytest.mark.parametrize(
    ("text", "content"),
    [
        # Whitespace tokens inside the text after a call are text: a stream used to drop
        # each whitespace-only piece once a call was made ("Done!Next para.").
        (f"Hi<tool_call>{CLOCK}</tool_call>\nDone!\n\nNext para.\n", "Hi\nDone!\n\nNext para.\n"),
        (f"\n<tool_call>{CLOCK}</tool_call>\n<tool_call>{CLOCK}</tool_call>\n", None),
        (f"Hi \n<tool_call>{CLOCK}</tool_call> x <tool_call>{CLOCK}</tool_call>\n", "Hi \n x \n"),
    ],
)
def test_text_around_calls_reads_the_same_in_any_pieces(text: str, content: str | None) -> None:
    assert parse_hermes(text).content == content
    rng = random.Random(0)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, 16)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert streamed(pieces)[0] == (content or ""), pieces
    assert streamed(list(text))[0] == (content or "")  # one character at a time


def test_a_stream_without_calls_is_the_text_exactly_even_with_a_partial_tag_at_the_end() -> None:
    text = "a < b and <tool_ca"
    for cut in range(len(text) + 1):
        content, calls, called = streamed([text[:cut], text[cut:]])
        assert (content, calls, called) == (text, [], False)


TOOLS = [{"type": "function", "function": {"name": "get_weather"}}]
MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]


def test_auto_tool_choice_through_the_sdk(hermes_sdk: tuple[openai.OpenAI, Stack]) -> None:
    client, stack = hermes_sdk
    stack.worker.set_script(TWO_CALLS)
    full = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS)
    choice = full.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me look.\n"
    calls = [c.model_dump() for c in choice.message.tool_calls or []]
    assert names_and_arguments(calls) == EXPECTED_CALLS

    chunks = list(
        client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, stream=True)
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content  # streamed or not, the same text
    deltas = [
        d.model_dump() for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []
    ]
    assert names_and_arguments(deltas) == EXPECTED_CALLS
    assert [d["index"] for d in deltas] == [0, 1]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"

    stack.worker.set_script(" No tools needed.")
    plain = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS)
    assert plain.choices[0].message.content == " No tools needed."
    assert not plain.choices[0].message.tool_calls
    assert plain.choices[0].finish_reason == "stop"


def test_parallel_tool_calls_false_keeps_the_first_call(
    hermes_sdk: tuple[openai.OpenAI, Stack],
) -> None:
    """As vLLM filters them: a model that writes two calls anyway answers with its first,
    whole or streamed."""
    client, stack = hermes_sdk
    stack.worker.set_script(TWO_CALLS)
    asked = {"model": MODEL, "messages": MESSAGES, "tools": TOOLS, "parallel_tool_calls": False}
    full = client.chat.completions.create(**asked)
    calls = [c.model_dump() for c in full.choices[0].message.tool_calls or []]
    assert names_and_arguments(calls) == EXPECTED_CALLS[:1]
    assert full.choices[0].finish_reason == "tool_calls"
    chunks = list(client.chat.completions.create(**asked, stream=True))
    deltas = [
        d.model_dump() for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []
    ]
    assert names_and_arguments(deltas) == EXPECTED_CALLS[:1]
    assert [d["index"] for d in deltas] == [0]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_text_after_a_dropped_call_stays_in_the_stream() -> None:
    """With parallel_tool_calls false, a chunk holding the second call and text after it
    (several tokens at once, as speculative decoding sends them) loses the call only."""
    text = f"Hi<tool_call>{WEATHER}</tool_call> between <tool_call>{CLOCK}</tool_call> after!"
    whole, _ = chat_message(text, "stop", None, "hermes", None, parallel_tool_calls=False)
    assert whole.content == "Hi between  after!"
    assert [c["function"]["name"] for c in whole.tool_calls or []] == ["get_weather"]
    second = text.index("<tool_call>", 5)
    parser, content, calls = HermesStream(), "", []
    for i, piece in enumerate([text[:second], text[second:]]):
        fields, _ = parser.feed(piece, final=i == 1)
        _first_call_only(fields)
        content += fields.get("content", "") + fields.get(AFTER_CALLS, "")
        calls += fields.get("tool_calls", [])
    assert content == whole.content
    assert [c["index"] for c in calls] == [0]


@pytest.mark.parametrize(
    "block",
    [
        '{"name": "f", "arguments": {"n": ' + "9" * 5000 + "}}",
        '{"name": "f", "arguments": ' + "[" * 50_000,
    ],
    ids=["integer_past_json_limits", "nesting_past_recursion_limit"],
)
def test_blocks_json_cannot_read_stay_text(block: str) -> None:
    text = f"<tool_call>{block}</tool_call>"
    assert parse_hermes(text).content == text and parse_hermes(text).tool_calls == []


def test_a_call_with_null_arguments_gets_an_empty_object() -> None:
    (call,) = parse_hermes('<tool_call>{"name": "now", "arguments": null}</tool_call>').tool_calls
    assert call["function"]["arguments"] == "{}"


def parse_hermes(text: str) -> ParsedOutput:
    return parse_tool_calls("hermes", text)
