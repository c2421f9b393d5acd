"""tool_choice "auto" with --tool-call-parser pythonic: an answer that is a Python list of
calls becomes tool_calls, whole or streamed, without running anything; any other answer
streams as content at once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from api.pythonic_tool_parser import PythonicStream
from api.tool_parsers import parse_tool_calls

from .conftest import MODEL, Stack, sdk_client
from .tool_call_helpers import MESSAGES, TOOLS, calls_through_the_sdk, named
from .tool_call_helpers import streamed as feed_pieces

CALLS = '[get_weather(city="Paris", unit="celsius", days=[1, 2], alerts=True), get_time()]'
EXPECTED = [
    ("get_weather", {"city": "Paris", "unit": "celsius", "days": [1, 2], "alerts": True}),
    ("get_time", {}),
]


def streamed(pieces: list[str]) -> tuple[str, list[dict[str, Any]], bool, int]:
    return feed_pieces(PythonicStream(), pieces)


@pytest.mark.parametrize("text", [CALLS, f" {CALLS}\n", f"<|python_start|>{CALLS}<|python_end|>"])
def test_calls_are_read_whole_and_split_anywhere(text: str) -> None:
    parsed = parse_tool_calls("pythonic", text)
    assert parsed.content is None and named(parsed.tool_calls) == EXPECTED
    for cut in range(len(text) + 1):
        content, calls, called, _ = streamed([text[:cut], text[cut:]])
        assert (content, named(calls), called) == ("", EXPECTED, True), cut
    assert [c["index"] for c in streamed(list(text))[1]] == [0, 1]


def test_python_literals_become_json() -> None:
    parsed = parse_tool_calls("pythonic", "[f(a=None, b=False, c=(1, 2), d={'k': 'v'}, e=-1.5)]")
    assert named(parsed.tool_calls) == [
        ("f", {"a": None, "b": False, "c": [1, 2], "d": {"k": "v"}, "e": -1.5})
    ]


def test_an_answer_in_words_streams_at_once() -> None:
    text = "The weather in Paris is sunny."
    content, calls, called, feeds = streamed(list(text))
    assert (content, calls, called, feeds) == (text, [], False, len(text))


@pytest.mark.parametrize(
    "text",
    [
        "[1, 2, 3]",  # a list, but not of calls
        "[]",
        "[get_weather('Paris')]",  # positional arguments: no names to give them
        "[f(x=open('/etc/passwd'))]",  # a computed value: never evaluated
        "[os.system(cmd='ls')]",  # not a plain function name
        "[f(**kwargs)]",
        "[f(x={1, 2})]",  # a set has no JSON
        "[f(x=1e999)]",  # nor has infinity
        '[get_weather(city="Paris")',  # cut short by max_tokens
        CALLS + " and some words",
        "<|python_st",  # a prefix of the tag, then the end
    ],
)
def test_text_that_only_looks_like_calls_is_kept_as_it_was(text: str) -> None:
    for pieces in ([text], list(text)):
        content, calls, called, _ = streamed(pieces)
        assert (content, calls, called) == (text, [], False)


@pytest.fixture()
def pythonic_sdk(make_stack: Callable[..., Stack]) -> Iterator[tuple[openai.OpenAI, Stack]]:
    stack = make_stack(tool_call_parser="pythonic")
    with sdk_client(stack) as client:
        yield client, stack


def test_auto_tool_choice_through_the_sdk(pythonic_sdk: tuple[openai.OpenAI, Stack]) -> None:
    client, stack = pythonic_sdk
    stack.worker.set_script(CALLS)
    calls_through_the_sdk(client, MODEL, EXPECTED)
    stack.worker.set_script(" It is sunny.")
    plain = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS)
    assert plain.choices[0].message.content == " It is sunny."


def test_odd_literals_print_no_warnings(recwarn: pytest.WarningsRecorder) -> None:
    """Model text is parsed, never run; Python's SyntaxWarnings about it are not the
    server's to print."""
    assert parse_tool_calls("pythonic", "[f(x=1or 2)]").tool_calls == []
    assert parse_tool_calls("olmo3", "<function_calls>\nf(x=1or 2)\n").tool_calls == []
    assert not [w for w in recwarn if issubclass(w.category, SyntaxWarning)]
