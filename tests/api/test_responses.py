"""`/v1/responses` through the official SDK, against a scripted worker."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from .conftest import MAX_MODEL_LEN, MODEL, Stack
from .fakes import CACHED_TOKENS, SCRIPT_TEXT, FakeWorker


def prompt_text(worker: FakeWorker) -> str:
    """The last prompt the worker was given, as text."""
    return worker.tokenizer.decode(worker.received[-1].prompt_token_ids)


def stream_events(client: openai.OpenAI, **kwargs: Any) -> list[Any]:
    return list(client.responses.create(model=MODEL, stream=True, **kwargs))


def without_ids(response: dict[str, Any]) -> dict[str, Any]:
    """A response object minus what differs between two runs of one request."""
    data = {k: v for k, v in response.items() if k not in ("id", "created_at", "completed_at")}
    data["output"] = [{k: v for k, v in item.items() if k != "id"} for item in data["output"]]
    for item in data["output"]:
        if item["type"] == "function_call":
            item.pop("call_id")
    return data


def test_text_input_gives_one_message_with_the_generated_text(
    sdk: openai.OpenAI, worker: FakeWorker
) -> None:
    response = sdk.responses.create(model=MODEL, input="Say something.")
    assert response.id.startswith("resp_")
    assert response.object == "response" and response.status == "completed"
    assert response.output_text == SCRIPT_TEXT
    (item,) = response.output
    assert item.type == "message" and item.role == "assistant" and item.status == "completed"
    prompt = len(worker.received[-1].prompt_token_ids)
    assert response.usage is not None
    assert response.usage.input_tokens == prompt
    assert response.usage.output_tokens == len(worker.script)
    assert response.usage.total_tokens == prompt + len(worker.script)
    assert response.usage.input_tokens_details.cached_tokens == CACHED_TOKENS
    assert "Say something." in prompt_text(worker)


def test_the_tier_reported_is_the_one_the_request_ran_in(sdk: openai.OpenAI) -> None:
    """OpenAI reports the tier used, which may differ from the one asked for; there is one."""
    response = sdk.responses.create(model=MODEL, input="Hi", service_tier="priority")
    assert response.service_tier == "default"


def test_the_stream_ends_with_the_object_the_whole_answer_is(sdk: openai.OpenAI) -> None:
    whole = sdk.responses.create(model=MODEL, input="Hi", instructions="Be brief.")
    events = stream_events(sdk, input="Hi", instructions="Be brief.")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    deltas = kinds.count("response.output_text.delta")
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert deltas == len(SCRIPT_TEXT.split())
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == SCRIPT_TEXT
    final = events[-1].response
    assert without_ids(final.model_dump()) == without_ids(whole.model_dump())
    assert final.instructions == "Be brief."

    with sdk.responses.stream(model=MODEL, input="Hi") as stream:
        helper = stream.get_final_response()
    assert helper.output_text == SCRIPT_TEXT


def test_max_output_tokens_makes_the_response_incomplete(sdk: openai.OpenAI) -> None:
    cut = sdk.responses.create(model=MODEL, input="Hi", max_output_tokens=3)
    assert cut.status == "incomplete"
    assert cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
    assert cut.output[0].status == "incomplete"
    assert cut.usage is not None and cut.usage.output_tokens == 3

    events = stream_events(sdk, input="Hi", max_output_tokens=3)
    assert events[-1].type == "response.incomplete"
    assert without_ids(events[-1].response.model_dump()) == without_ids(cut.model_dump())


def test_previous_response_id_continues_the_conversation(
    sdk: openai.OpenAI, worker: FakeWorker
) -> None:
    first = sdk.responses.create(
        model=MODEL, input="My name is Ada.", instructions="Answer in French."
    )
    worker.set_script(" Second answer.")
    second = sdk.responses.create(
        model=MODEL, input="What is my name?", previous_response_id=first.id
    )
    prompt = prompt_text(worker)
    assert prompt.index("My name is Ada.") < prompt.index(SCRIPT_TEXT.strip())
    assert prompt.index(SCRIPT_TEXT.strip()) < prompt.index("What is my name?")
    assert "Answer in French." not in prompt  # instructions are not carried over
    assert second.previous_response_id == first.id

    third = sdk.responses.create(model=MODEL, input="And again?", previous_response_id=second.id)
    assert third.status == "completed"
    prompt = prompt_text(worker)
    assert prompt.index("My name is Ada.") < prompt.index("Second answer.")

    streamed = stream_events(sdk, input="Streamed?", previous_response_id=third.id)
    assert streamed[-1].type == "response.completed"
    assert "And again?" in prompt_text(worker)
    # The streamed response was stored before its last event went out.
    assert sdk.responses.retrieve(streamed[-1].response.id).output_text == " Second answer."


def test_stored_responses_can_be_read_listed_and_deleted(sdk: openai.OpenAI) -> None:
    created = sdk.responses.create(
        model=MODEL,
        input=[
            {"role": "developer", "content": "Be terse."},
            {"role": "user", "content": [{"type": "input_text", "text": "One"}]},
            {"type": "message", "role": "user", "content": "Two"},
        ],
        metadata={"ticket": "42"},
    )
    assert sdk.responses.retrieve(created.id).model_dump() == created.model_dump()
    assert created.metadata == {"ticket": "42"}

    items = list(sdk.responses.input_items.list(created.id))
    assert [i.role for i in items] == ["user", "user", "developer"]  # newest first
    assert [i.content[0].text for i in items] == ["Two", "One", "Be terse."]
    assert all(i.id.startswith("msg_") for i in items)
    oldest = list(sdk.responses.input_items.list(created.id, order="asc"))
    assert [i.id for i in oldest] == [i.id for i in reversed(items)]
    page = sdk.responses.input_items.list(created.id, order="asc", limit=1, after=oldest[0].id)
    assert [i.id for i in page.data] == [oldest[1].id] and page.has_more

    sdk.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.responses.create(model=MODEL, input="Hi", previous_response_id=created.id)
    assert missing.value.code == "previous_response_not_found"


def test_a_broken_chain_names_the_missing_turn_and_empty_input_adds_none(
    sdk: openai.OpenAI, worker: FakeWorker
) -> None:
    first = sdk.responses.create(model=MODEL, input="First.")
    second = sdk.responses.create(model=MODEL, input="Second.", previous_response_id=first.id)
    third = sdk.responses.create(model=MODEL, previous_response_id=second.id)  # no input
    messages = worker.tokenizer.decode(worker.received[-1].prompt_token_ids)
    assert messages.count("user") == 2  # First., Second.: no empty third user turn
    # Its input items are the turns it was generated from: each earlier input and output.
    history = list(sdk.responses.input_items.list(third.id, order="asc"))
    first_input, second_input = (
        list(sdk.responses.input_items.list(r.id, order="asc"))[-1] for r in (first, second)
    )
    assert [i.id for i in history] == [
        first_input.id,
        first.output[0].id,
        second_input.id,
        second.output[0].id,
    ]
    assert [i.role for i in history] == ["user", "assistant", "user", "assistant"]
    sdk.responses.delete(first.id)
    # A deleted turn ends the history there.
    assert [i.id for i in sdk.responses.input_items.list(third.id, order="asc")] == [
        second_input.id,
        second.output[0].id,
    ]
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.responses.create(model=MODEL, input="Hi", previous_response_id=second.id)
    assert first.id in missing.value.message and second.id in missing.value.message


def test_store_false_keeps_nothing(sdk: openai.OpenAI) -> None:
    response = sdk.responses.create(model=MODEL, input="Hi", store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(response.id)


WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
ARGUMENTS = '{"city": "Paris"}'


def test_a_named_tool_call_is_a_function_call_item(sdk: openai.OpenAI, worker: FakeWorker) -> None:
    worker.set_script(ARGUMENTS)
    choice = {"type": "function", "name": "get_weather"}
    called = sdk.responses.create(
        model=MODEL, input="Weather in Paris?", tools=[WEATHER_TOOL], tool_choice=choice
    )
    (item,) = called.output
    assert item.type == "function_call" and item.name == "get_weather"
    assert json.loads(item.arguments) == {"city": "Paris"}
    assert item.call_id.startswith("call_")
    # The arguments were generated under the tool's schema.
    constraint = worker.received[-1].sampling["structured_output"]
    assert constraint["kind"] == "json"

    events = stream_events(sdk, input="Weather in Paris?", tools=[WEATHER_TOOL], tool_choice=choice)
    arguments = "".join(
        e.delta for e in events if e.type == "response.function_call_arguments.delta"
    )
    assert arguments == ARGUMENTS
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done.arguments == ARGUMENTS and done.name == "get_weather"
    assert without_ids(events[-1].response.model_dump()) == without_ids(called.model_dump())

    # Continued without the call's output: OpenAI's 400, nothing generated.
    received = len(worker.received)
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(model=MODEL, previous_response_id=called.id, input="And?")
    assert refused.value.message.endswith(f"No tool output found for function call {item.call_id}.")
    assert len(worker.received) == received

    # The call and its output continue the conversation as a tool turn.
    worker.set_script(" It is sunny.")
    answer = sdk.responses.create(
        model=MODEL,
        previous_response_id=called.id,
        input=[{"type": "function_call_output", "call_id": item.call_id, "output": "sunny, 21C"}],
        tools=[WEATHER_TOOL],
        tool_choice="none",
    )
    assert answer.output_text == " It is sunny."
    prompt = prompt_text(worker)
    assert prompt.index("Paris") < prompt.index("sunny, 21C")


def test_auto_tool_choice_gives_text_then_calls(hermes_sdk: tuple[openai.OpenAI, Stack]) -> None:
    client, stack = hermes_sdk
    stack.worker.set_script(
        'Let me look.<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>'
    )
    whole = client.responses.create(model=MODEL, input="Paris and Rome?", tools=[WEATHER_TOOL])
    assert [i.type for i in whole.output] == ["message", "function_call", "function_call"]
    assert whole.output_text == "Let me look."
    cities = [json.loads(i.arguments)["city"] for i in whole.output if i.type == "function_call"]
    assert cities == ["Paris", "Rome"]

    with client.responses.stream(
        model=MODEL, input="Paris and Rome?", tools=[WEATHER_TOOL]
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [i.type for i in final.output] == ["message", "function_call", "function_call"]
    added = [e.item.type for e in events if e.type == "response.output_item.added"]
    assert added == ["message", "function_call", "function_call"]
    assert summary(final) == summary(whole)


def summary(response: Any) -> list[tuple[str, str, str]]:
    """Each output item's kind, status and what it says (text, or name and arguments)."""
    return [
        (i.type, i.status, i.content[0].text if i.type == "message" else i.name + i.arguments)
        for i in response.output
    ]


@pytest.mark.parametrize(
    "script",
    [
        'Look.<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call> Done.',
        '\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
    ],
)
def test_text_around_calls_comes_out_in_order_streamed_or_not(
    hermes_sdk: tuple[openai.OpenAI, Stack], script: str
) -> None:
    client, stack = hermes_sdk
    stack.worker.set_script(script)
    whole = client.responses.create(model=MODEL, input="Paris?", tools=[WEATHER_TOOL])
    events = list(
        client.responses.create(model=MODEL, input="Paris?", tools=[WEATHER_TOOL], stream=True)
    )
    assert summary(events[-1].response) == summary(whole)
    if script.startswith("Look."):
        assert [i.type for i in whole.output] == ["message", "function_call", "message"]
        assert whole.output_text == "Look. Done."
    else:  # whitespace before a call is not an item of its own
        assert [i.type for i in whole.output] == ["function_call"]


@pytest.mark.parametrize("tool_choice", [{"type": "function", "name": "get_weather"}, "required"])
def test_a_forced_call_with_logprobs_is_one_function_call(
    sdk: openai.OpenAI, worker: FakeWorker, tool_choice: Any
) -> None:
    if tool_choice == "required":
        worker.set_script('[{"name": "get_weather", "parameters": {"city": "Paris"}}]')
    else:
        worker.set_script(ARGUMENTS)
    options: dict[str, Any] = dict(
        model=MODEL,
        input="Weather in Paris?",
        tools=[WEATHER_TOOL],
        tool_choice=tool_choice,
        include=["message.output_text.logprobs"],
        top_logprobs=1,
    )
    whole = sdk.responses.create(**options)
    events = list(sdk.responses.create(**options, stream=True))
    assert events[-1].type == "response.completed"
    for response in (whole, events[-1].response):
        (call,) = response.output
        assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Paris"}


class City(BaseModel):
    name: str
    population: int


def test_text_format_json_schema_parses_into_the_model(
    sdk: openai.OpenAI, worker: FakeWorker
) -> None:
    worker.set_script('{"name": "Paris", "population": 2100000}')
    parsed = sdk.responses.parse(model=MODEL, input="Describe Paris.", text_format=City)
    assert parsed.output_parsed == City(name="Paris", population=2100000)
    assert worker.received[-1].sampling["structured_output"]["kind"] == "json"
    assert parsed.text.format.type == "json_schema"


def test_logprobs_are_included_when_asked(sdk: openai.OpenAI) -> None:
    response = sdk.responses.create(
        model=MODEL, input="Hi", include=["message.output_text.logprobs"], top_logprobs=2
    )
    streamed = stream_events(
        sdk, input="Hi", include=["message.output_text.logprobs"], top_logprobs=2
    )
    assert streamed[-1].response.output[0].content[0].logprobs == part_logprobs(response)
    # Each token's logprob comes in one delta, the first's too (with the message it opens).
    deltas = [e for e in streamed if e.type == "response.output_text.delta"]
    assert [lp.model_dump() for e in deltas for lp in e.logprobs] == [
        lp.model_dump() for lp in part_logprobs(response)
    ]
    part = response.output[0].content[0]
    assert part.logprobs is not None and len(part.logprobs) == len(SCRIPT_TEXT.split())
    assert all(len(lp.top_logprobs) == 2 for lp in part.logprobs)
    assert "".join(lp.token for lp in part.logprobs) == SCRIPT_TEXT
    plain = sdk.responses.create(model=MODEL, input="Hi", top_logprobs=2)  # no include
    assert not plain.output[0].content[0].logprobs


def part_logprobs(response: Any) -> Any:
    return response.output[0].content[0].logprobs


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"conversation": "conv_1"}, "conversation"),
        ({"tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"tool_choice": {"type": "file_search"}, "tools": [WEATHER_TOOL]}, "tool_choice"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input[0].content[0]",
        ),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"input": ""}, "input"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format"),
        (
            {"text": {"format": {"type": "json_schema", "schema": {"type": "object"}}}},
            "text.format.name",
        ),
        (
            {"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": 7}}}},
            "text.format",
        ),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"metadata": {str(i): "v" for i in range(17)}}, "metadata"),
        ({"service_tier": "bogus"}, "service_tier"),
        ({"stream_options": {"include_obfuscation": False}}, "stream_options"),
    ],
)
def test_what_cannot_run_is_a_400_naming_the_field(
    sdk: openai.OpenAI, fields: dict[str, Any], param: str
) -> None:
    request: dict[str, Any] = {"model": MODEL, "input": "Hi", **fields}
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(**request)
    assert refused.value.param == param, refused.value.message


def test_a_prompt_too_long_names_input(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(model=MODEL, input="word " * 400)
    assert refused.value.param == "input"
    assert refused.value.code == "context_length_exceeded"


def test_a_worker_error_is_an_error_status_or_event(sdk: openai.OpenAI, worker: FakeWorker) -> None:
    worker.behaviour = "error"
    with pytest.raises(openai.APIStatusError) as failed:
        sdk.responses.create(model=MODEL, input="Hi")
    assert failed.value.status_code == 503
    events = stream_events(sdk, input="Hi")
    assert [e.type for e in events] == ["response.created", "response.in_progress", "error"]
    assert events[-1].sequence_number == 2
    assert events[-1].code == "oom" and "out of memory" in events[-1].message


def test_a_restart_after_text_went_out_is_an_error_not_repeated_text(
    sdk: openai.OpenAI, worker: FakeWorker
) -> None:
    worker.behaviour = "restart"  # the first worker dies after two tokens
    events = stream_events(sdk, input="Hi")
    assert events[-1].type == "error" and events[-1].code == "worker_restarted"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert SCRIPT_TEXT.startswith(text) and len(text) < len(SCRIPT_TEXT)
    # Whole answers are simply retried on the new worker.
    assert sdk.responses.create(model=MODEL, input="Hi").output_text == SCRIPT_TEXT


def test_truncation_auto_drops_the_oldest_turns_that_do_not_fit(
    sdk: openai.OpenAI, worker: FakeWorker
) -> None:
    turns: list[dict[str, Any]] = [{"role": "system", "content": "Rules stay."}]
    for number in range(12):
        turns.append({"role": "user", "content": f"question {number} " + "filler " * 20})
        turns.append({"role": "assistant", "content": f"answer {number}"})
    turns.append({"role": "user", "content": "The last question."})
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(model=MODEL, input=turns, max_output_tokens=16)
    assert refused.value.code == "context_length_exceeded"

    response = sdk.responses.create(
        model=MODEL, input=turns, max_output_tokens=16, truncation="auto"
    )
    assert response.truncation == "auto" and response.status == "completed"
    prompt = prompt_text(worker)
    assert "Rules stay." in prompt and "The last question." in prompt
    assert "question 0 " not in prompt and "answer 11" in prompt
    assert response.usage is not None and response.usage.input_tokens + 16 <= MAX_MODEL_LEN
    # Kept are the newest turns that fit: adding the next older one would not.
    kept = [n for n in range(12) if f"question {n} " in prompt]
    assert kept == list(range(kept[0], 12))


def test_input_tokens_counts_what_the_model_would_read(
    sdk: openai.OpenAI, worker: FakeWorker
) -> None:
    options: dict[str, Any] = dict(model=MODEL, input="Count me.", instructions="Be brief.")
    before = len(worker.received)
    counted = sdk.responses.input_tokens.count(**options)
    assert counted.object == "response.input_tokens"
    created = sdk.responses.create(**options)
    assert created.usage is not None
    assert counted.input_tokens == created.usage.input_tokens
    assert len(worker.received) == before + 1  # counting generated nothing

    follow_up = sdk.responses.input_tokens.count(
        model=MODEL, input="And then?", previous_response_id=created.id
    )
    continued = sdk.responses.create(
        model=MODEL, input="And then?", previous_response_id=created.id
    )
    assert continued.usage is not None
    assert follow_up.input_tokens == continued.usage.input_tokens > counted.input_tokens

    long = [{"role": "user", "content": f"turn {n} " + "pad " * 40} for n in range(10)]
    with pytest.raises(openai.NotFoundError):
        sdk.responses.input_tokens.count(model="no-such-model", input="x")
    fitted = sdk.responses.input_tokens.count(model=MODEL, input=long, truncation="auto")
    whole = sdk.responses.input_tokens.count(model=MODEL, input=long)
    assert fitted.input_tokens < MAX_MODEL_LEN < whole.input_tokens


def test_model_may_be_left_out_while_one_model_is_served(
    sdk: openai.OpenAI, worker: FakeWorker
) -> None:
    """As in vLLM, and as chat and completions allow: the one base model answers."""
    created = sdk.responses.create(input="Count me.", max_output_tokens=2)  # type: ignore[call-overload]
    assert created.model == MODEL and created.status == "incomplete"
    counted = sdk.responses.input_tokens.count(input="Count me.")
    assert counted.input_tokens == (created.usage.input_tokens if created.usage else None)


def test_an_answers_logprobs_are_found_by_their_text_under_token_ids() -> None:
    """A delta's answer takes the last logprobs whose tokens spell it; tokens named
    `token_id:N` (return_tokens_as_token_ids) are measured by their bytes."""
    from api.responses_stream import _covering

    def entry(text: str, token_id: int) -> dict:
        return {"token": f"token_id:{token_id}", "bytes": list(text.encode()), "logprob": -1.0}

    thinking = [entry(" hmm", 1), entry(" ok", 2)]
    answer = [entry(" Paris", 3), entry(".", 4)]
    assert _covering(thinking + answer, " Paris.") == answer
