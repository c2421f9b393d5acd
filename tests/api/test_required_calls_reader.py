"""The "required" tool-call array read as it grows: every split of the text streams the same
calls, and any prefix (a max_tokens cut) gives back the calls it holds."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from api.required_calls_reader import RequiredCallsReader

CALLS = [
    {"name": "get_weather", "parameters": {"city": 'Pa"ris {x}', "days": [1, 2], "deep": {}}},
    {"name": "get_time", "parameters": {}},
    {"name": "caf\u00e9", "parameters": {"note": "back\\slash ] }", "n": -1.5e3, "ok": True}},
]
TEXTS = [
    json.dumps(CALLS),
    json.dumps(CALLS, indent=4),
    json.dumps(CALLS, separators=(",", ":"), ensure_ascii=True),
    # Keys in the other order, and parameters that are not objects.
    '[ {"parameters": {"a": 1}, "name": "f"}, {"name": "g", "parameters": 7 },'
    ' {"name": "h", "parameters": "s,}"} ]',
]


def assembled(deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The calls a client puts together from the deltas, as the OpenAI SDK does."""
    calls: list[dict[str, Any]] = []
    for delta in deltas:
        if "id" in delta:
            assert delta["index"] == len(calls) and delta["type"] == "function"
            calls.append({"id": delta["id"], **delta["function"]})
        else:
            calls[delta["index"]]["arguments"] += delta["function"]["arguments"]
    return calls


def expected_calls(text: str) -> list[tuple[str, Any]]:
    return [(item["name"], item["parameters"]) for item in json.loads(text)]


@pytest.mark.parametrize("text", TEXTS)
def test_any_split_streams_the_same_calls(text: str) -> None:
    randomly = random.Random(0)
    for _ in range(20):
        reader = RequiredCallsReader()
        deltas, start = [], 0
        while start < len(text):
            size = randomly.choice([1, 1, 2, 3, 7, 40])
            deltas += reader.feed(text[start : start + size])
            start += size
        calls = assembled(deltas)
        assert [(c["name"], json.loads(c["arguments"])) for c in calls] == expected_calls(text)
        finished = reader.tool_calls()
        assert [c["id"] for c in finished] == [c["id"] for c in calls]
        # The whole answer's arguments are the streamed text, character for character.
        assert [c["function"]["arguments"] for c in finished] == [c["arguments"] for c in calls]


def test_a_call_is_announced_as_soon_as_its_name_is_complete() -> None:
    reader = RequiredCallsReader()
    assert reader.feed('[{"name": "get_wea') == []
    (first,) = reader.feed('ther", "parameters": {"ci')
    assert first["function"] == {"name": "get_weather", "arguments": '{"ci'}
    (more,) = reader.feed('ty": "Oslo"}}, {"name"')
    assert more == {"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}


@pytest.mark.parametrize("text", TEXTS)
def test_every_prefix_keeps_the_calls_it_holds(text: str) -> None:
    whole = expected_calls(text)
    for cut in range(len(text) + 1):
        reader = RequiredCallsReader()
        reader.feed(text[:cut])
        calls = reader.tool_calls()
        assert len(calls) <= len(whole)
        for call, (name, _parameters) in zip(calls, whole, strict=False):
            assert call["function"]["name"] == name
            # As the model wrote them, so far.
            assert call["function"]["arguments"] in text[:cut]
        # Every call but the last is complete: its parameters' text, whole.
        for call, (_, parameters) in zip(calls[:-1], whole, strict=False):
            assert json.loads(call["function"]["arguments"]) == parameters
