"""--reasoning-parser deepseek_r1, qwen3 (olmo3) and seed_oss: a reasoning model's
thinking goes out as `reasoning` (and vLLM's older `reasoning_content`), apart from the
answer, whole or streamed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal, get_args, get_origin

import openai
import pytest

from api.reasoning_parser import (
    REASONING_PARSERS,
    ThinkStart,
    ThinkStream,
    reasoning_token_count,
    split_reasoning,
    think_start,
    think_stream,
    think_tags,
)
from conveyor.cli import build_parser
from conveyor.settings import Settings

from .conftest import MODEL, Stack, sdk_client
from .tool_call_helpers import MESSAGES, TOOLS, named

THOUGHT = "\nThe user asks for a capital. France's is Paris.\n"
ANSWER = "The capital of France is Paris."


def streamed(pieces: list[str], start: ThinkStart = ThinkStart.INSIDE) -> tuple[str, str]:
    """(reasoning, answer) of `pieces` fed one by one to `start`'s split."""
    stream = think_stream(start)
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


@pytest.mark.parametrize(
    ("text", "reasoning", "answer"),
    [
        (f"<think>{THOUGHT}</think>\n\n{ANSWER}", THOUGHT, ANSWER),
        (f"\n<think>{THOUGHT}", THOUGHT, ""),  # opened, then cut short
        # Nothing opened a think block: all answer, a stray closing tag included.
        (ANSWER, "", ANSWER),
        (f"{THOUGHT}</think>{ANSWER}", "", f"{THOUGHT}</think>{ANSWER}"),
        ("<thin", "", "<thin"),
        ("", "", ""),
    ],
)
def test_qwen3_thinks_only_inside_an_opened_block(text: str, reasoning: str, answer: str) -> None:
    start = ThinkStart.IF_OPENED
    assert split_reasoning(text, start) == (reasoning or None, answer.lstrip())
    for cut in range(len(text) + 1):
        assert streamed([text[:cut], text[cut:]], start) == (reasoning, answer.lstrip()), cut
    assert streamed(list(text), start) == (reasoning, answer.lstrip())


def test_the_prompt_end_says_where_the_output_starts() -> None:
    closed = "<|im_start|>assistant\n<think>\n\n</think>\n\n"  # enable_thinking false
    opened = "<|im_start|>assistant\n<think>\n"  # Qwen3-Thinking-2507, R1's distills
    plain = "<|im_start|>assistant\n"
    for parser in ("deepseek_r1", "qwen3", "olmo3"):
        assert think_start(parser, closed) is ThinkStart.ANSWER
        assert think_start(parser, opened) is ThinkStart.INSIDE
    # R1 may think without opening the block; Qwen3 and OLMo 3 open it when they think.
    assert think_start("deepseek_r1", plain) is ThinkStart.INSIDE
    assert think_start("qwen3", plain) is ThinkStart.IF_OPENED
    assert think_start("olmo3", plain) is ThinkStart.IF_OPENED
    # A closed block earlier in the conversation does not count; the last one does.
    assert think_start("qwen3", closed + "Hi<|im_end|>\n" + opened) is ThinkStart.INSIDE


def test_reasoning_tokens_run_to_the_one_that_completes_the_block() -> None:
    pieces = ["Hmm", " ok", "</", "think", ">", "\n\n", "Paris"]
    ids = list(range(len(pieces)))

    def decode(prefix: list[int]) -> str:
        return "".join(pieces[i] for i in prefix)

    assert reasoning_token_count(decode, ids, ThinkStart.INSIDE) == 5
    assert reasoning_token_count(decode, ids[:4], ThinkStart.INSIDE) == 4  # cut short
    assert reasoning_token_count(decode, ids, ThinkStart.ANSWER) == 0
    assert reasoning_token_count(decode, ids, ThinkStart.IF_OPENED) == 0  # never opened
    assert reasoning_token_count(decode, [], ThinkStart.INSIDE) == 0
    pieces.insert(0, " <think>")
    assert reasoning_token_count(decode, [*ids, len(ids)], ThinkStart.IF_OPENED) == 6


def test_usage_counts_the_thinking_tokens(reasoning_sdk: tuple[openai.OpenAI, Stack]) -> None:
    """Whole, streamed and in the Responses API, as OpenAI's usage details name it."""
    client, stack = reasoning_sdk
    script = f"{THOUGHT}</think>\n\n{ANSWER}"
    stack.worker.set_script(script)
    tokenizer = stack.worker.tokenizer
    ids = tokenizer.encode(script, add_special_tokens=False)
    thinking = next(k for k in range(1, len(ids) + 1) if "</think>" in tokenizer.decode(ids[:k]))
    assert 0 < thinking < len(ids)
    whole = client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2)
    assert whole.usage is not None and whole.usage.completion_tokens_details is not None
    # Choice 1 starts a token later in the fake worker's script: one fewer to think.
    assert whole.usage.completion_tokens_details.reasoning_tokens == 2 * thinking - 1
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == thinking
    response = client.responses.create(model=MODEL, input="Capital of France?")
    assert response.usage is not None
    assert response.usage.output_tokens_details.reasoning_tokens == thinking


def test_every_configurable_parser_is_known() -> None:
    annotation = Settings.model_fields["reasoning_parser"].annotation
    names = {
        name
        for member in get_args(annotation)
        if get_origin(member) is Literal
        for name in get_args(member)
    }
    assert names == set(REASONING_PARSERS)
    for name in names:
        assert build_parser().parse_args(["serve", "--reasoning-parser", name]).reasoning_parser


def test_qwen3_through_the_api_thinks_only_when_it_opens_the_block(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(reasoning_parser="qwen3", tool_call_parser="hermes")
    with sdk_client(stack) as client:
        stack.worker.set_script(f"<think>{THOUGHT}</think>\n\n{ANSWER}")
        message = client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert message.choices[0].message.content == ANSWER
        assert (message.choices[0].message.model_extra or {})["reasoning"] == THOUGHT
        chunks = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        assert "".join((d.model_extra or {}).get("reasoning") or "" for d in deltas) == THOUGHT
        assert "".join(d.content or "" for d in deltas) == ANSWER
        # No block opened: the whole output is the answer, streamed or not.
        stack.worker.set_script(f"{ANSWER} A stray </think> stays.")
        plain = client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert plain.choices[0].message.content == f"{ANSWER} A stray </think> stays."
        assert "reasoning" not in (plain.choices[0].message.model_extra or {})
        chunks = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == f"{ANSWER} A stray </think> stays."
        # A template that opened the block in the prompt (Qwen3-Thinking-2507's).
        stack.worker.set_script(f"{THOUGHT}</think>{ANSWER}")
        opened = client.chat.completions.create(
            model=MODEL,
            messages=[*MESSAGES, {"role": "assistant", "content": "<think>\n"}],
            extra_body={"continue_final_message": True, "add_generation_prompt": False},
        )
        assert opened.choices[0].message.content == ANSWER
        assert (opened.choices[0].message.model_extra or {})["reasoning"] == THOUGHT


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


def test_a_constraint_binds_the_answer_after_the_thinking(
    reasoning_sdk: tuple[openai.OpenAI, Stack],
) -> None:
    """As in vLLM, a response format or a forced call constrains the answer only: the
    worker is told to let the model think up to </think> first."""
    client, stack = reasoning_sdk
    stack.worker.set_script(f'{THOUGHT}</think>\n\n{{"city": "Paris"}}')
    answer = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, response_format={"type": "json_object"}
    )
    message = answer.choices[0].message
    assert message.content == '{"city": "Paris"}'
    assert (message.model_extra or {})["reasoning"] == THOUGHT
    assert stack.worker.received[-1].sampling["structured_output"]["after_thinking"] == "inside"
    stack.worker.set_script(f"{THOUGHT}</think>{{}}")  # a named call: its arguments
    forced = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    assert stack.worker.received[-1].sampling["structured_output"]["after_thinking"] == "inside"
    calls = [c.model_dump() for c in forced.choices[0].message.tool_calls or []]
    assert named(calls) == [("get_time", {})]
    assert (forced.choices[0].message.model_extra or {})["reasoning"] == THOUGHT
    # Thinking switched off in the prompt: the constraint binds from the first token.
    stack.worker.set_script('{"city": "Paris"}')
    closed = client.chat.completions.create(
        model=MODEL,
        messages=[*MESSAGES, {"role": "assistant", "content": "<think>\n\n</think>\n\n"}],
        response_format={"type": "json_object"},
        extra_body={"continue_final_message": True, "add_generation_prompt": False},
    )
    assert closed.choices[0].message.content == '{"city": "Paris"}'
    assert stack.worker.received[-1].sampling["structured_output"]["after_thinking"] is None


def test_qwen3_may_answer_a_constraint_at_once(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(reasoning_parser="qwen3")
    with sdk_client(stack) as client:
        stack.worker.set_script('{"city": "Paris"}')
        answer = client.chat.completions.create(
            model=MODEL, messages=MESSAGES, response_format={"type": "json_object"}
        )
    assert answer.choices[0].message.content == '{"city": "Paris"}'
    sampling = stack.worker.received[-1].sampling
    assert sampling["structured_output"]["after_thinking"] == "if_opened"


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


def test_a_prompt_that_closed_its_think_block_gets_all_answer() -> None:
    """Templates with thinking turned off (enable_thinking false) end the prompt with
    `<think></think>`: nothing after is reasoning, even without a closing tag."""
    call = '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    assert split_reasoning(call, ThinkStart.ANSWER) == (None, call)
    stream = ThinkStream(ThinkStart.ANSWER)
    assert stream.feed("\nParis", final=False) == ("", "Paris")
    assert stream.feed(" is the capital.", final=True) == ("", " is the capital.")


def test_thinking_switched_off_in_the_prompt_through_the_api(
    reasoning_sdk: tuple[openai.OpenAI, Stack],
) -> None:
    client, stack = reasoning_sdk
    stack.worker.set_script(ANSWER)
    closed = [
        *MESSAGES,
        {"role": "assistant", "content": "<think>\n\n</think>\n\n"},
    ]
    answer = client.chat.completions.create(
        model=MODEL,
        messages=closed,
        extra_body={"continue_final_message": True, "add_generation_prompt": False},
    )
    message = answer.choices[0].message
    assert message.content == ANSWER and "reasoning" not in (message.model_extra or {})


def test_thinking_only_and_include_reasoning_false(
    reasoning_sdk: tuple[openai.OpenAI, Stack],
) -> None:
    client, stack = reasoning_sdk
    stack.worker.set_script(THOUGHT)  # cut short before </think>
    message = client.chat.completions.create(model=MODEL, messages=MESSAGES).choices[0].message
    assert message.content is None and (message.model_extra or {})["reasoning"] == THOUGHT
    stack.worker.set_script(f"{THOUGHT}</think>{ANSWER}")
    hidden = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, extra_body={"include_reasoning": False}
    )
    assert hidden.choices[0].message.content == ANSWER
    assert "reasoning" not in (hidden.choices[0].message.model_extra or {})


def test_response_logprobs_cover_the_answer_only(
    reasoning_sdk: tuple[openai.OpenAI, Stack],
) -> None:
    client, stack = reasoning_sdk
    stack.worker.set_script(f"{THOUGHT}</think>\n\n{ANSWER}")
    for stream in (False, True):
        request = {
            "model": MODEL,
            "input": "The capital of France?",
            "include": ["message.output_text.logprobs"],
        }
        if stream:
            events = list(client.responses.create(**request, stream=True))
            response = events[-1].response
        else:
            response = client.responses.create(**request)
        message = response.output[-1]
        spelled = "".join(lp.token for lp in message.content[0].logprobs or [])
        assert spelled.strip().endswith(ANSWER.strip()), stream
        assert "France's is Paris" not in spelled, stream


def test_only_the_models_own_turn_decides_where_it_starts(
    reasoning_sdk: tuple[openai.OpenAI, Stack],
) -> None:
    """A think block kept from an earlier turn (a tool loop's) or quoted by the user, at
    the prompt's end, does not switch thinking off for the new turn."""
    client, stack = reasoning_sdk
    stack.worker.set_script(f"{THOUGHT}</think>{ANSWER}")
    history = [
        *MESSAGES,
        {"role": "assistant", "content": "<think>Short.</think>Paris."},
        {"role": "user", "content": "Once more: </think>?"},
    ]
    answer = client.chat.completions.create(model=MODEL, messages=history)
    message = answer.choices[0].message
    assert message.content == ANSWER
    assert (message.model_extra or {})["reasoning"] == THOUGHT


SEED_THOUGHT = "Budget left: 100.<seed:cot_budget_reflect>ok</seed:cot_budget_reflect>"


@pytest.mark.parametrize(
    ("text", "reasoning", "answer"),
    [
        (f"<seed:think>{SEED_THOUGHT}</seed:think>\n{ANSWER}", SEED_THOUGHT, ANSWER),
        (f"<seed:think>{SEED_THOUGHT}", SEED_THOUGHT, ""),  # cut short: all thinking
        (ANSWER, "", ANSWER),  # no block opened: all answer
        (f"<think>{THOUGHT}</think>{ANSWER}", "", f"<think>{THOUGHT}</think>{ANSWER}"),
    ],
)
def test_seed_oss_thinks_inside_its_own_tags(text: str, reasoning: str, answer: str) -> None:
    tags = think_tags("seed_oss")
    start = think_start("seed_oss", "<seed:bos>assistant\n")
    assert start is ThinkStart.IF_OPENED
    assert split_reasoning(text, start, tags=tags) == (reasoning or None, answer)
    for cut in range(len(text) + 1):
        stream = think_stream(start, tags=tags)
        first = stream.feed(text[:cut], final=False)
        last = stream.feed(text[cut:], final=True)
        assert (first[0] + last[0], first[1] + last[1]) == (reasoning, answer), cut
    pieces = [text[:13], text[13:]]
    ids = [0, 1]
    count = reasoning_token_count(lambda p: "".join(pieces[i] for i in p), ids, start, tags)
    assert count == (2 if reasoning else 0)


def test_seed_oss_thinking_and_calls_through_the_sdk(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(reasoning_parser="seed_oss", tool_call_parser="seed_oss")
    call = "<seed:tool_call><function=get_time></function></seed:tool_call>"
    stack.worker.set_script(f"<seed:think>{SEED_THOUGHT}</seed:think>Checking.{call}")
    with sdk_client(stack) as client:
        whole = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS)
        choice = whole.choices[0]
        assert (choice.message.model_extra or {})["reasoning"] == SEED_THOUGHT
        assert choice.message.content == "Checking."
        assert named([c.model_dump() for c in choice.message.tool_calls or []]) == [
            ("get_time", {})
        ]
        assert choice.finish_reason == "tool_calls"
        with pytest.raises(openai.BadRequestError, match="reasoning-parser seed_oss"):
            client.chat.completions.create(
                model=MODEL, messages=MESSAGES, response_format={"type": "json_object"}
            )
