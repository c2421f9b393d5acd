"""--reasoning-parser deepseek_r1: a reasoning model's <think> text goes out as `reasoning`
(and vLLM's older `reasoning_content`), apart from the answer, whole or streamed."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import openai
import pytest

from api.reasoning_parser import ThinkStream, split_reasoning

from .conftest import MODEL, Stack, sdk_client
from .tool_call_helpers import MESSAGES, TOOLS, named

THOUGHT = "\nThe user asks for a capital. France's is Paris.\n"
ANSWER = "The capital of France is Paris."


def streamed(pieces: list[str]) -> tuple[str, str]:
    stream = ThinkStream()
    reasoning = answer = ""
    for i, piece in enumerate(pieces):
        r, a = stream.feed(piece, final=i == len(pieces) - 1)
        reasoning, answer = reasoning + r, answer + a
    return reasoning, answer


@pytest.mark.parametrize(
    ("text", "reasoning", "answer"),
    [
        # The chat template opened <think> in the prompt: the output starts inside it.
        (f"{THOUGHT}</think>\n\n{ANSWER}", THOUGHT, ANSWER),
        (f"<think>{THOUGHT}</think>\n\n{ANSWER}", THOUGHT, ANSWER),
        (f"  <think>{THOUGHT}</think>{ANSWER}", THOUGHT, ANSWER),
        # Cut short before </think> (max_tokens): all of it is thinking, as in vLLM.
        (f"<think>{THOUGHT}", THOUGHT, ""),
        (f"{THOUGHT}</thi", f"{THOUGHT}</thi", ""),
        (f"</think>{ANSWER}", "", ANSWER),
    ],
)
def test_thinking_and_answer_split_whole_and_anywhere(
    text: str, reasoning: str, answer: str
) -> None:
    assert split_reasoning(text) == (reasoning or None, answer)
    for cut in range(len(text) + 1):
        assert streamed([text[:cut], text[cut:]]) == (reasoning, answer), cut
    assert streamed(list(text)) == (reasoning, answer)


@pytest.fixture()
def reasoning_sdk(make_stack: Callable[..., Stack]) -> Iterator[tuple[openai.OpenAI, Stack]]:
    stack = make_stack(reasoning_parser="deepseek_r1", tool_call_parser="hermes")
    with sdk_client(stack) as client:
        yield client, stack


def test_chat_answers_carry_the_thinking_apart(reasoning_sdk: tuple[openai.OpenAI, Stack]) -> None:
    client, stack = reasoning_sdk
    stack.worker.set_script(f"{THOUGHT}</think>\n\n{ANSWER}")
    whole = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    message = whole.choices[0].message
    assert message.content == ANSWER
    extra = message.model_extra or {}
    assert extra["reasoning"] == extra["reasoning_content"] == THOUGHT
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    thinking = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
    assert thinking == THOUGHT
    assert "".join(d.content or "" for d in deltas) == ANSWER
    # No delta carries both, and none carries an empty answer beside its thinking.
    assert not any(d.content and (d.model_extra or {}).get("reasoning") for d in deltas)


def test_a_call_after_the_thinking_is_a_tool_call(
    reasoning_sdk: tuple[openai.OpenAI, Stack],
) -> None:
    client, stack = reasoning_sdk
    call = '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    stack.worker.set_script(f"{THOUGHT}</think>\n\n{call}")
    whole = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert named([c.model_dump() for c in choice.message.tool_calls or []]) == [("get_time", {})]
    assert (choice.message.model_extra or {})["reasoning"] == THOUGHT


def test_a_constrained_answer_is_all_answer(reasoning_sdk: tuple[openai.OpenAI, Stack]) -> None:
    """A response format leaves no room to think: nothing in it is read as reasoning."""
    client, stack = reasoning_sdk
    stack.worker.set_script('{"city": "Paris"}')
    answer = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, response_format={"type": "json_object"}
    )
    message = answer.choices[0].message
    assert message.content == '{"city": "Paris"}'
    assert "reasoning" not in (message.model_extra or {})


def test_without_a_parser_the_thinking_stays_in_the_text(sdk: openai.OpenAI, stack: Stack) -> None:
    stack.worker.set_script(f"{THOUGHT}</think>{ANSWER}")
    message = sdk.chat.completions.create(model=MODEL, messages=MESSAGES).choices[0].message
    assert message.content == f"{THOUGHT}</think>{ANSWER}"
    assert "reasoning" not in (message.model_extra or {})


def test_a_response_has_a_reasoning_item_before_its_message(
    reasoning_sdk: tuple[openai.OpenAI, Stack],
) -> None:
    client, stack = reasoning_sdk
    stack.worker.set_script(f"{THOUGHT}</think>\n\n{ANSWER}")
    response = client.responses.create(model=MODEL, input="The capital of France?")
    thinking, message = response.output
    assert thinking.type == "reasoning" and thinking.status == "completed"
    assert [part.text for part in thinking.content or []] == [THOUGHT]
    assert message.type == "message" and response.output_text == ANSWER
    events = list(client.responses.create(model=MODEL, input="Again?", stream=True))
    kinds = [e.type for e in events]
    assert kinds.index("response.reasoning_text.done") < kinds.index("response.output_text.delta")
    deltas = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert deltas == THOUGHT
    streamed_output = events[-1].response.output
    assert [item.type for item in streamed_output] == ["reasoning", "message"]
    # The thinking is not fed back: a continuation's prompt has the answer only.
    client.responses.create(model=MODEL, input="And Spain?", previous_response_id=response.id)
    prompt = stack.worker.tokenizer.decode(stack.worker.received[-1].prompt_token_ids)
    assert ANSWER in prompt and "France's is Paris" not in prompt
