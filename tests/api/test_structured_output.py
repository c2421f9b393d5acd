"""Every spelling of a structured-output request reaches the worker as one constraint;
a constraint that cannot work is a 400 naming the parameter, before anything is queued."""

from __future__ import annotations

import enum
import json
from typing import Any

import httpx
import openai
import pydantic
import pytest

from engine.structured_output import ANY_JSON_OBJECT

from .conftest import MODEL
from .fakes import FakeWorker
from .test_errors import error_of

MESSAGES = [{"role": "user", "content": "hi"}]
SCHEMA = {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "integer"}}}
# What the engine is sent: an object that lists its properties allows no others.
CLOSED_SCHEMA = {**SCHEMA, "additionalProperties": False}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time"}}
FORMAT = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}


def sent(client: httpx.Client, worker: FakeWorker, path: str, patch: dict[str, Any]) -> Any:
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 2, **patch}
    if path == "/v1/chat/completions":
        body["messages"] = MESSAGES
    else:
        body["prompt"] = "hi"
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    (request,) = worker.received
    return request.sampling["structured_output"]


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({}, None),
        ({"response_format": {"type": "text"}}, None),
        ({"response_format": {"type": "json_object"}}, ("json", json.loads(ANY_JSON_OBJECT))),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": SCHEMA},
                }
            },
            ("json", CLOSED_SCHEMA),
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            ("json", json.loads(ANY_JSON_OBJECT)),
        ),
        ({"guided_json": SCHEMA}, ("json", CLOSED_SCHEMA)),
        ({"guided_json": json.dumps(SCHEMA)}, ("json", CLOSED_SCHEMA)),
        ({"guided_regex": "[a-z]+"}, ("regex", "[a-z]+")),
        ({"guided_choice": ["x", "y"]}, ("choice", ["x", "y"])),
        ({"guided_grammar": 'root ::= "a"'}, ("grammar", 'root ::= "a"')),
        ({"structured_outputs": {"json": SCHEMA}}, ("json", CLOSED_SCHEMA)),
        ({"structured_outputs": {"json_object": True}}, ("json", json.loads(ANY_JSON_OBJECT))),
        ({"structured_outputs": {"regex": "[0-9]+"}}, ("regex", "[0-9]+")),
        ({"structured_outputs": {"choice": ["a", "b"]}}, ("choice", ["a", "b"])),
        ({"structured_outputs": {"grammar": 'start: "a"'}}, ("grammar", 'start: "a"')),
    ],
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_each_spelling_becomes_one_constraint(
    client: httpx.Client, worker: FakeWorker, path: str, patch: dict, expected: Any
) -> None:
    constraint = sent(client, worker, path, patch)
    if expected is None:
        assert constraint is None
        return
    kind, spec = expected
    assert constraint["kind"] == kind
    got = json.loads(constraint["spec"]) if kind in ("json", "choice") else constraint["spec"]
    assert got == spec
    if kind == "json":
        # The schema's own key order: properties are generated in that order.
        assert list(json.loads(constraint["spec"])) == list(spec)


def test_whitespace_options_travel_with_the_json_constraint(
    client: httpx.Client, worker: FakeWorker
) -> None:
    compact = sent(
        client,
        worker,
        "/v1/chat/completions",
        {"structured_outputs": {"json": SCHEMA, "disable_any_whitespace": True}},
    )
    assert compact["compact_json"] is True
    worker.received.clear()
    pattern = sent(
        client,
        worker,
        "/v1/chat/completions",
        {"response_format": {"type": "json_object"}, "guided_whitespace_pattern": " ?"},
    )
    assert pattern["whitespace_pattern"] == " ?" and pattern["compact_json"] is False


@pytest.mark.parametrize(
    ("patch", "param", "message"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "bad", "schema": {"type": "objekt"}},
                }
            },
            "response_format",
            "invalid JSON schema",
        ),
        (  # OpenAI and vLLM both require the name
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
            "response_format.json_schema.name",
            "name is required",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "required"),
        ({"response_format": {"type": "yaml"}}, "response_format.type", "json_schema"),
        ({"guided_regex": "[0-9"}, "guided_regex", "unclosed character class"),
        ({"guided_json": "{not json"}, "guided_json", "not valid JSON"),
        ({"guided_choice": []}, "guided_choice", "non-empty list"),
        ({"guided_grammar": "root ::= nowhere"}, "guided_grammar", "invalid grammar"),
        (
            {"structured_outputs": {"regex": "(a", "json_object": True}},
            "structured_outputs",
            "exactly one",
        ),
        ({"structured_outputs": {}}, "structured_outputs", "exactly one"),
        (
            {"response_format": {"type": "json_object"}, "guided_regex": "a+"},
            "guided_regex",
            "only one structured output constraint",
        ),
        (
            {"response_format": {"type": "json_object"}, "guided_whitespace_pattern": "[ "},
            "response_format",
            "invalid JSON schema",
        ),
        ({"tool_choice": "required"}, "tools", "requires tools"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
            "not in tools",
        ),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice", "must be"),
        ({"tools": [{"type": "retrieval"}], "tool_choice": "required"}, "tools[0]", "function"),
        ({"tools": [{"type": "function"}], "tool_choice": "required"}, "tools[0].function", ""),
        (
            {
                "tools": [WEATHER],
                "tool_choice": "required",
                "guided_json": SCHEMA,
            },
            "guided_json",
            "cannot be combined",
        ),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}
                ],
                "tool_choice": "required",
            },
            "tools[0].function.parameters",
            "of type 'object', got type 5",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "object", "properties": {"a": {"type": 5}}},
                        },
                    }
                ],
                "tool_choice": "required",
            },
            "tools",
            "invalid JSON schema",
        ),
    ],
)
def test_constraints_that_cannot_work_are_400_and_never_queued(
    client: httpx.Client, worker: FakeWorker, patch: dict, param: str, message: str
) -> None:
    body = {"model": MODEL, "messages": MESSAGES, **patch}
    error = error_of(client.post("/v1/chat/completions", json=body), 400)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert message in error["message"]
    assert worker.received == []


def test_a_named_tool_choice_generates_that_functions_arguments(
    client: httpx.Client, worker: FakeWorker
) -> None:
    constraint = sent(
        client,
        worker,
        "/v1/chat/completions",
        {
            "tools": [WEATHER, CLOCK],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        },
    )
    parameters = WEATHER["function"]["parameters"]
    assert json.loads(constraint["spec"]) == {**parameters, "additionalProperties": False}


@pytest.mark.parametrize("response_format", [{"type": "json_object"}, FORMAT])
def test_a_forced_call_takes_the_place_of_response_format(
    client: httpx.Client, worker: FakeWorker, response_format: dict[str, Any]
) -> None:
    """As on OpenAI: response_format shapes text, which a forced call has none of."""
    constraint = sent(
        client,
        worker,
        "/v1/chat/completions",
        {
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "response_format": response_format,
        },
    )
    parameters = WEATHER["function"]["parameters"]
    assert json.loads(constraint["spec"]) == {**parameters, "additionalProperties": False}


def test_required_tool_choice_generates_an_array_of_calls(
    client: httpx.Client, worker: FakeWorker
) -> None:
    constraint = sent(
        client,
        worker,
        "/v1/chat/completions",
        {"tools": [WEATHER, CLOCK], "tool_choice": "required", "parallel_tool_calls": False},
    )
    schema = json.loads(constraint["spec"])
    assert (schema["type"], schema["minItems"], schema["maxItems"]) == ("array", 1, 1)
    names = [v["properties"]["name"]["enum"] for v in schema["items"]["anyOf"]]
    assert names == [["get_weather"], ["get_time"]]
    assert schema["items"]["anyOf"][1]["properties"]["parameters"] == {
        "type": "object",
        "properties": {},
        "additionalProperties": False,  # a function without parameters takes {}
    }


class Unit(enum.StrEnum):
    celsius = "celsius"
    fahrenheit = "fahrenheit"


class Place(pydantic.BaseModel):
    city: str
    country: str


class GetWeather(pydantic.BaseModel):
    place: Place
    unit: Unit


class GetForecast(pydantic.BaseModel):
    place: Place
    days: int


def test_required_tool_choice_keeps_pydantic_definitions_resolvable(
    client: httpx.Client, worker: FakeWorker
) -> None:
    """pydantic_function_tool puts enums and nested models in $defs, referenced from the root;
    nested inside the array of calls, those pointers must still resolve."""
    tools = [openai.pydantic_function_tool(GetWeather), openai.pydantic_function_tool(GetForecast)]
    constraint = sent(
        client, worker, "/v1/chat/completions", {"tools": tools, "tool_choice": "required"}
    )
    schema = json.loads(constraint["spec"])
    assert set(schema["$defs"]) == {"Place", "Unit"}
    for variant in schema["items"]["anyOf"]:
        assert "$defs" not in variant["properties"]["parameters"]


def test_tools_defining_one_name_differently_cannot_share_a_required_choice(
    client: httpx.Client, worker: FakeWorker
) -> None:
    first = openai.pydantic_function_tool(GetWeather)
    second = openai.pydantic_function_tool(GetForecast)
    second["function"]["parameters"]["$defs"]["Place"]["properties"]["zip"] = {"type": "string"}
    body = {
        "model": MODEL,
        "messages": MESSAGES,
        "tools": [first, second],
        "tool_choice": "required",
    }
    error = error_of(client.post("/v1/chat/completions", json=body), 400)
    assert error["param"] == "tools" and "$defs/Place" in error["message"]
    assert worker.received == []


REQUIRED_ANSWER = [
    {"name": "get_weather", "parameters": {"city": "Paris, the one in France"}},
    {"name": "get_time", "parameters": {}},
]


def test_required_calls_stream_one_by_one_as_they_are_written(
    sdk: openai.OpenAI, worker: FakeWorker
) -> None:
    """Each call goes out once its name is complete, its arguments piece by piece, as
    OpenAI streams them (not all at once when the array closes); the whole answer to the
    same text has the same arguments, character for character, whitespace included."""
    worker.set_script(json.dumps(REQUIRED_ANSWER, indent=2))
    options: dict[str, Any] = {
        "model": MODEL,
        "messages": MESSAGES,
        "tools": [WEATHER, CLOCK],
        "tool_choice": "required",
        "max_tokens": 200,
    }
    chunks = list(sdk.chat.completions.create(**options, stream=True))
    carrying = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(carrying) > 3
    assert carrying[0].choices[0].finish_reason is None
    calls: list[dict[str, Any]] = []
    for chunk in carrying:
        for delta in chunk.choices[0].delta.tool_calls or []:
            if delta.id is not None:
                assert delta.index == len(calls) and delta.function is not None
                calls.append({"name": delta.function.name, "arguments": ""})
            assert delta.function is not None
            calls[delta.index]["arguments"] += delta.function.arguments or ""
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        (c["name"], c["parameters"]) for c in REQUIRED_ANSWER
    ]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert all(not c.choices or not c.choices[0].delta.content for c in chunks)
    whole = sdk.chat.completions.create(**options).choices[0]
    assert [(c.function.name, c.function.arguments) for c in whole.message.tool_calls or []] == [
        (c["name"], c["arguments"]) for c in calls
    ]
    assert whole.finish_reason == "tool_calls"


@pytest.mark.parametrize("stream", [False, True])
def test_required_calls_cut_by_max_tokens_keep_what_was_written(
    sdk: openai.OpenAI, worker: FakeWorker, stream: bool
) -> None:
    """The cut lands in the second call: the first is whole, the second keeps its name and
    the arguments written so far (as a named call cut short does), and none is text."""
    text = json.dumps(REQUIRED_ANSWER[::-1])  # get_time first, then get_weather's arguments
    worker.set_script(text)
    ids = worker.tokenizer.encode(text, add_special_tokens=False)
    cut = next(n for n in range(len(ids)) if "Paris" in worker.tokenizer.decode(ids[:n]))
    options: dict[str, Any] = {
        "model": MODEL,
        "messages": MESSAGES,
        "tools": [WEATHER, CLOCK],
        "tool_choice": "required",
        "max_tokens": cut,
    }
    if stream:
        chunks = list(sdk.chat.completions.create(**options, stream=True))
        finish = chunks[-1].choices[0].finish_reason
        calls: list[dict[str, str]] = []
        for chunk in chunks:
            for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                assert delta.function is not None
                if delta.id is not None:
                    calls.append({"name": delta.function.name or "", "arguments": ""})
                calls[delta.index]["arguments"] += delta.function.arguments or ""
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        choice = sdk.chat.completions.create(**options).choices[0]
        finish, content = choice.finish_reason, choice.message.content or ""
        calls = [
            {"name": c.function.name, "arguments": c.function.arguments}
            for c in choice.message.tool_calls or []
            if c.type == "function"
        ]
    assert finish == "length" and content == ""
    assert [c["name"] for c in calls] == ["get_time", "get_weather"]
    assert json.loads(calls[0]["arguments"]) == {}
    assert calls[1]["arguments"].startswith('{"city": "Paris')
    assert calls[1]["arguments"] in text
