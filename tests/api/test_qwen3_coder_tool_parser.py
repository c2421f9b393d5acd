"""tool_choice "auto" with --tool-call-parser qwen3_coder: Qwen3-Coder's
`<function=NAME><parameter=KEY>` calls read out of its text, their bare-text
arguments typed by the request's tool schemas, the same whole or streamed in any
pieces, and through the OpenAI and Anthropic SDKs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import pytest

from api.qwen3_coder_tool_parser import Qwen3CoderStream, SeedOssStream
from api.tool_call_json import AFTER_CALLS, ParsedOutput
from api.tool_choice import function_parameters
from api.tool_parsers import parse_tool_calls

from .conftest import MODEL, Stack, sdk_client

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "write_file",
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "content": {"type": "string"},
                    "mode": {"type": "integer"},
                    "overwrite": {"type": "boolean"},
                    "ratio": {"type": "number"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "limit": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                },
            },
        },
    },
    {"type": "function", "function": {"name": "get_time"}},
]
WRITE = (
    "<tool_call>\n<function=write_file>\n"
    "<parameter=path>\nnotes.txt\n</parameter>\n"
    '<parameter=content>\nline one\n  "two" é\n\n</parameter>\n'
    "<parameter=mode>\n644\n</parameter>\n"
    "<parameter=overwrite>\nTrue\n</parameter>\n"
    "</function>\n</tool_call>"
)
CLOCK = "<tool_call>\n<function=get_time>\n</function>\n</tool_call>"
TWO_CALLS = f"I'll save it.\n{WRITE}\n{CLOCK}"
WRITE_ARGUMENTS = {
    "path": "notes.txt",
    "content": 'line one\n  "two" é\n',
    "mode": 644,
    "overwrite": True,
}
EXPECTED = [("write_file", WRITE_ARGUMENTS), ("get_time", {})]


def parse(text: str, tools: list[dict[str, Any]] | None = TOOLS) -> ParsedOutput:
    return parse_tool_calls("qwen3_coder", text, tools)


def names_and_arguments(calls: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


def test_calls_are_read_with_their_arguments_typed_by_the_tool_schemas() -> None:
    parsed = parse(TWO_CALLS)
    assert parsed.content == "I'll save it.\n"
    assert names_and_arguments(parsed.tool_calls) == EXPECTED
    # The arguments are json.dumps of the typed values, exactly.
    assert parsed.tool_calls[0]["function"]["arguments"] == json.dumps(
        WRITE_ARGUMENTS, ensure_ascii=False
    )
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in parsed.tool_calls)


def _call(parameters: str, function: str = "write_file") -> str:
    return f"<tool_call>\n<function={function}>\n{parameters}</function>\n</tool_call>"


def _parameter(name: str, value: str) -> str:
    return f"<parameter={name}>\n{value}\n</parameter>\n"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("path", "42", "42"),  # a string stays the text written
        ("path", "null", None),  # null is null whatever the type (vLLM's rule)
        ("path", "  spaced  ", "  spaced  "),
        ("mode", "-7", -7),
        ("mode", "seven", "seven"),  # not an integer: kept as written
        ("ratio", "2.5", 2.5),
        ("ratio", "3.0", 3),  # no fraction: an integer, as vLLM gives it
        ("ratio", "inf", "inf"),  # JSON has no infinity
        ("overwrite", "false", False),
        ("overwrite", "FALSE", False),
        ("tags", '["a", "b"]', ["a", "b"]),
        ("tags", "['a', 'b']", ["a", "b"]),  # a Python literal
        ("tags", "{1, 2}", "{1, 2}"),  # a set is no JSON value: kept as text
        ("tags", "[unclosed", "[unclosed"),
        ("limit", "5", 5),  # Optional[int] types as int
        ("undeclared", "12", "12"),  # a parameter the schema does not name is text
    ],
)
def test_a_value_is_typed_by_its_declared_type(name: str, value: str, expected: Any) -> None:
    (call,) = parse(_call(_parameter(name, value))).tool_calls
    assert json.loads(call["function"]["arguments"]) == {name: expected}


def test_refs_and_type_lists_resolve_as_pydantic_writes_them() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "f",
                "parameters": {
                    "$defs": {"Level": {"type": "integer", "enum": [1, 2]}},
                    "properties": {
                        "level": {"$ref": "#/$defs/Level"},
                        "count": {"type": ["null", "integer"]},
                    },
                },
            },
        }
    ]
    text = _call(_parameter("level", "2") + _parameter("count", "3"), function="f")
    (call,) = parse(text, tools).tool_calls
    assert json.loads(call["function"]["arguments"]) == {"level": 2, "count": 3}


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        ("Just an answer, a < b.", "Just an answer, a < b.", []),
        # a value ends at the next parameter or at </function> too (vLLM's lookaheads)
        (
            "<tool_call><function=write_file><parameter=path>a.txt<parameter=mode>7</function>",
            None,
            [("write_file", {"path": "a.txt", "mode": 7})],
        ),
        # a function without its <tool_call>, and a </tool_call> without </function>
        ("<function=get_time>\n</function>", None, [("get_time", {})]),
        ("<tool_call><function=get_time></tool_call> after", " after", [("get_time", {})]),
        # one block holding two functions
        (
            "<tool_call><function=get_time></function><function=get_time></function></tool_call>",
            None,
            [("get_time", {}), ("get_time", {})],
        ),
        # Qwen3's own JSON calls inside the block
        ('<tool_call>{"name": "get_time", "arguments": {}}</tool_call>', None, [("get_time", {})]),
        # not calls: kept as written
        ("<tool_call>no call</tool_call>", "<tool_call>no call</tool_call>", []),
        ("use <function=a b> here", "use <function=a b> here", []),
        ("ends with <function=get_ti", "ends with <function=get_ti", []),
    ],
)
def test_whole_outputs(text: str, content: str | None, calls: list) -> None:
    parsed = parse(text)
    assert parsed.content == content
    assert names_and_arguments(parsed.tool_calls) == calls


@pytest.mark.parametrize(
    ("cut", "arguments"),
    [
        ("<tool_call>\n<function=write_file>\n<parameter=pa", {}),
        ("<tool_call>\n<function=write_file>\n<parameter=path>\nnot", {"path": "not"}),
        (
            "<tool_call>\n<function=write_file>\n<parameter=path>\nx\n</parameter>\n<param",
            {"path": "x"},
        ),
    ],
)
def test_a_call_cut_short_keeps_the_arguments_written_so_far(
    cut: str, arguments: dict[str, Any]
) -> None:
    (call,) = parse(cut).tool_calls
    assert json.loads(call["function"]["arguments"]) == arguments


def streamed(text: str, cuts: list[int]) -> tuple[str, list[dict[str, Any]], list[Any]]:
    """Content, the calls as a client assembles them, and every delta, for `text` fed
    in the pieces `cuts` makes."""
    parser = Qwen3CoderStream(function_parameters(TOOLS))
    bounds = [0, *cuts, len(text)]
    content, calls, deltas = "", {}, []
    for i in range(len(bounds) - 1):
        final = i == len(bounds) - 2
        fields, _ = parser.feed(text[bounds[i] : bounds[i + 1]], final)
        content += fields.get("content", "") + fields.get(AFTER_CALLS, "")
        for delta in fields.get("tool_calls", []):
            deltas.append(delta)
            call = calls.setdefault(delta["index"], {"name": None, "arguments": ""})
            call["name"] = call["name"] or delta["function"].get("name")
            call["arguments"] += delta["function"]["arguments"]
    assembled = [{"function": calls[i]} for i in sorted(calls)]
    return content, assembled, deltas


def test_a_stream_split_anywhere_gives_the_same_arguments_byte_for_byte() -> None:
    whole = parse(TWO_CALLS)
    arguments = [c["function"]["arguments"] for c in whole.tool_calls]
    for cut in range(len(TWO_CALLS) + 1):
        content, calls, _ = streamed(TWO_CALLS, [cut])
        assert content.strip() == "I'll save it.", cut
        assert [c["function"]["arguments"] for c in calls] == arguments, cut
    content, calls, deltas = streamed(TWO_CALLS, list(range(1, len(TWO_CALLS))))
    assert [c["function"]["arguments"] for c in calls] == arguments
    assert content.strip() == "I'll save it."
    # No fragment of a tag reaches the client, and a text value streams as it is written.
    assert "<" not in content and not any("</" in d["function"]["arguments"] for d in deltas)
    pieces = [d["function"]["arguments"] for d in deltas if d["index"] == 0]
    assert len(pieces) > 20


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # `</tool_call>` closing a function with no `</function>`, then another call
        (
            "<tool_call>\n<function=get_time>\n</tool_call>\n<tool_call>\n<function=write_file>\n"
            "<parameter=path>\nhi\n</parameter>\n</function>\n</tool_call>",
            [("get_time", {}), ("write_file", {"path": "hi"})],
        ),
        # the name's layout on lines of its own
        ("<function=\nget_time\n>\n</function>", [("get_time", {})]),
        # a value whose block closes without `</parameter>` or `</function>` ends there
        (
            "<tool_call>\n<function=write_file>\n<parameter=path>\nx\n</tool_call>\nSo.\n" + CLOCK,
            [("write_file", {"path": "x"}), ("get_time", {})],
        ),
    ],
)
def test_loose_layouts_give_the_same_calls_split_anywhere(
    text: str, expected: list[tuple[str, Any]]
) -> None:
    assert names_and_arguments(parse(text).tool_calls) == expected
    for cut in range(len(text) + 1):
        _, calls, _ = streamed(text, [cut])
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == (
            expected
        ), cut


def test_text_values_stream_before_they_end_and_null_waits() -> None:
    parser = Qwen3CoderStream(function_parameters(TOOLS))
    fields, called = parser.feed(
        "<tool_call>\n<function=write_file>\n<parameter=content>\nab", False
    )
    assert called
    assert [d["function"]["arguments"] for d in fields["tool_calls"]] == ['{"content": "ab']
    fields, _ = parser.feed("c\n", False)  # the newline may be the layout's: held
    assert fields["tool_calls"][0]["function"]["arguments"] == "c"
    fields, _ = parser.feed("</parameter>\n<parameter=path>\nnul", False)
    assert fields["tool_calls"][0]["function"]["arguments"] == '", "path": '
    fields, _ = parser.feed("l\n</parameter>\n</function>", True)
    assert fields["tool_calls"][0]["function"]["arguments"] == "null}"


def test_text_after_a_call_follows_it() -> None:
    fields, called = Qwen3CoderStream().feed(f"Look.{CLOCK} Done.", True)
    assert called and fields["content"] == "Look." and fields[AFTER_CALLS] == " Done."
    assert parse(f"Look.{CLOCK} Done.").content == "Look. Done."


def test_a_stream_without_calls_is_the_text_exactly_even_with_a_partial_tag_at_the_end() -> None:
    text = "a < b and <tool_ca"
    for cut in range(len(text) + 1):
        assert streamed(text, [cut])[:2] == (text, [])


@pytest.fixture()
def qwen3_coder_stack(make_stack: Callable[..., Stack]) -> Iterator[Stack]:
    yield make_stack(tool_call_parser="qwen3_coder")


MESSAGES = [{"role": "user", "content": "Save my notes."}]


def test_auto_tool_choice_through_the_openai_sdk(qwen3_coder_stack: Stack) -> None:
    stack = qwen3_coder_stack
    stack.worker.set_script(TWO_CALLS)
    with sdk_client(stack) as client:
        full = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS)
        choice = full.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content == "I'll save it.\n"
        calls = [c.model_dump() for c in choice.message.tool_calls or []]
        assert names_and_arguments(calls) == EXPECTED

        with client.chat.completions.stream(model=MODEL, messages=MESSAGES, tools=TOOLS) as s:
            chunks = [e.chunk for e in s if e.type == "chunk"]
            final = s.get_final_completion()
        streamed_calls = [c.model_dump() for c in final.choices[0].message.tool_calls or []]
        assert [(c["function"]["name"], c["function"]["arguments"]) for c in streamed_calls] == [
            (c["function"]["name"], c["function"]["arguments"]) for c in calls
        ]
        assert final.choices[0].finish_reason == "tool_calls"
        argument_chunks = [
            d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []
        ]
        assert len(argument_chunks) > 4  # the arguments came in pieces, not whole

        stack.worker.set_script(WRITE)
        cut = client.chat.completions.create(
            model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=24
        )
        assert cut.choices[0].finish_reason == "length"
        (call,) = cut.choices[0].message.tool_calls or []
        assert json.loads(call.function.arguments) == {"path": "notes.txt"}  # an object still


def test_a_tool_use_block_through_the_anthropic_sdk(qwen3_coder_stack: Stack) -> None:
    stack = qwen3_coder_stack
    stack.worker.set_script(WRITE)
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 200,
        "messages": MESSAGES,
        "tools": [
            {"name": t["function"]["name"], "input_schema": t["function"].get("parameters", {})}
            for t in TOOLS
        ],
    }
    with anthropic.Anthropic(base_url=stack.url, api_key="unused", max_retries=0) as claude:
        message = claude.messages.create(**body)
        (block,) = message.content
        assert block.type == "tool_use" and message.stop_reason == "tool_use"
        assert (block.name, block.input) == ("write_file", WRITE_ARGUMENTS)
        with claude.messages.stream(**body) as stream:
            final = stream.get_final_message()
        assert final.content[0].input == WRITE_ARGUMENTS  # type: ignore[union-attr]


SEED = (
    "<seed:think>I could call <function=get_time></function> here.</seed:think>"
    "Saving.\n<seed:tool_call>\n<function=write_file>\n<parameter=mode>\n7\n</parameter>\n"
    "</function>\n</seed:tool_call>"
)
SEED_THOUGHT = "<seed:think>I could call <function=get_time></function> here.</seed:think>"


def test_seed_oss_reads_its_blocks_and_leaves_its_thinking_as_content() -> None:
    """Seed-OSS's tags; a call the thinking mentions is no call (as in vLLM's parser)."""
    parsed = parse_tool_calls("seed_oss", SEED, TOOLS)
    assert names_and_arguments(parsed.tool_calls) == [("write_file", {"mode": 7})]
    assert parsed.content == SEED_THOUGHT + "Saving.\n"
    for cut in range(len(SEED) + 1):
        parser = SeedOssStream(function_parameters(TOOLS))
        content, arguments = "", ""
        for piece, final in ((SEED[:cut], False), (SEED[cut:], True)):
            fields, _ = parser.feed(piece, final)
            content += fields.get("content", "") + fields.get(AFTER_CALLS, "")
            arguments += "".join(d["function"]["arguments"] for d in fields.get("tool_calls", []))
        # (Whitespace alone in a feed that calls is no content: the newline may go.)
        assert (content.rstrip(), json.loads(arguments)) == (
            SEED_THOUGHT + "Saving.",
            {"mode": 7},
        ), cut


def test_seed_oss_through_the_openai_sdk(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(tool_call_parser="seed_oss")
    stack.worker.set_script(SEED)
    with sdk_client(stack) as client:
        full = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS)
        (call,) = full.choices[0].message.tool_calls or []
        assert (call.function.name, json.loads(call.function.arguments)) == (
            "write_file",
            {"mode": 7},
        )
        assert full.choices[0].finish_reason == "tool_calls"
