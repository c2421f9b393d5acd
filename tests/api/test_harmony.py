"""gpt-oss through the API: its harmony messages read without flags, as vLLM reads them.

The fake worker publishes its model as writing harmony (as a real worker does
for GptOssForCausalLM) and is scripted with harmony text in a tokenizer that
has harmony's markers as special tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from benchmarks.random_model import copy_tokenizer

from ..harmony_tokenizer import with_harmony_tokens
from .conftest import MODEL, running_stack, sdk_client, worker_on
from .fakes import FakeWorker
from .tool_call_helpers import MESSAGES, TOOLS, calls_through_the_sdk

THOUGHT = "The user wants the weather. I will answer."
ANSWER = "It is sunny in Paris."
ANALYSIS = f"<|channel|>analysis<|message|>{THOUGHT}<|end|>"
FINAL = f"<|start|>assistant<|channel|>final<|message|>{ANSWER}<|return|>"
CALL = (
    "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
    '<|message|>{"city": "Paris"}<|call|>'
)


@pytest.fixture(scope="module")
def harmony_dir(bundled_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = copy_tokenizer(bundled_model_dir, tmp_path_factory.mktemp("harmony-tokenizer"))
    with_harmony_tokens(folder)
    return folder


@pytest.fixture()
def gpt_oss(redis_url: str, harmony_dir: Path) -> Iterator[tuple[openai.OpenAI, FakeWorker]]:
    """A stack with no parser flags whose one worker serves a harmony model."""
    with (
        running_stack(redis_url, harmony_dir, with_worker=False) as stack,
        worker_on(stack, harmony=True) as worker,
        sdk_client(stack) as client,
    ):
        yield client, worker


def test_the_analysis_channel_is_reasoning_and_the_final_one_the_answer(
    gpt_oss: tuple[openai.OpenAI, FakeWorker],
) -> None:
    client, worker = gpt_oss
    worker.set_script(ANALYSIS + FINAL)
    whole = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    message = whole.choices[0].message
    assert message.content == ANSWER and whole.choices[0].finish_reason == "stop"
    assert (message.model_extra or {})["reasoning"] == THOUGHT
    # The markers are special tokens: the request kept them for the parser.
    assert worker.received[-1].sampling["skip_special_tokens"] is False
    # Usage counts the analysis message's tokens as reasoning.
    thought_ids = worker.tokenizer.encode(ANALYSIS, add_special_tokens=False)
    assert whole.usage is not None and whole.usage.completion_tokens_details is not None
    assert whole.usage.completion_tokens_details.reasoning_tokens == len(thought_ids)
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join((d.model_extra or {}).get("reasoning") or "" for d in deltas) == THOUGHT
    assert "".join(d.content or "" for d in deltas) == ANSWER
    assert not any("<|" in (d.content or "") for d in deltas)


def test_tools_are_called_without_a_parser_flag(gpt_oss: tuple[openai.OpenAI, FakeWorker]) -> None:
    """gpt-oss's calls are harmony messages to functions.NAME ("openai" parser)."""
    client, worker = gpt_oss
    worker.set_script(ANALYSIS + CALL)
    calls_through_the_sdk(client, MODEL, [("get_weather", {"city": "Paris"})])
    whole = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS)
    assert (whole.choices[0].message.model_extra or {})["reasoning"] == THOUGHT


def test_a_preamble_is_content_and_no_marker_reaches_a_client_that_wants_no_calls(
    gpt_oss: tuple[openai.OpenAI, FakeWorker],
) -> None:
    client, worker = gpt_oss
    preamble = "<|start|>assistant<|channel|>commentary<|message|>Let me check.<|end|>"
    worker.set_script(ANALYSIS + preamble + CALL)
    whole = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS)
    message = whole.choices[0].message
    assert message.content == "Let me check." and len(message.tool_calls or []) == 1
    # tool_choice "none": the model called anyway; nothing runs it, so it is thinking.
    none = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="none"
    )
    assert none.choices[0].message.content == "Let me check."
    assert not none.choices[0].message.tool_calls
    assert "<|" not in str(none.choices[0].message.model_dump())


def test_a_constraint_binds_the_final_message(gpt_oss: tuple[openai.OpenAI, FakeWorker]) -> None:
    """A response format lets the model think on its analysis channel first; the worker
    is asked for the grammar that frames the answer as the final message."""
    client, worker = gpt_oss
    answer = json.dumps({"city": "Paris"})
    worker.set_script(f"{ANALYSIS}<|start|>assistant<|channel|>final<|message|>{answer}")
    format_ = {
        "type": "json_schema",
        "json_schema": {"name": "city", "schema": {"type": "object"}},
    }
    whole = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        response_format=format_,  # type: ignore[arg-type]
    )
    assert json.loads(whole.choices[0].message.content or "") == {"city": "Paris"}
    constraint = worker.received[-1].sampling["structured_output"]
    assert constraint["after_thinking"] == "harmony"


def test_a_response_has_the_analysis_as_its_reasoning_item(
    gpt_oss: tuple[openai.OpenAI, FakeWorker],
) -> None:
    client, worker = gpt_oss
    worker.set_script(ANALYSIS + FINAL)
    response = client.responses.create(model=MODEL, input="Weather in Paris?")
    thinking, message = response.output
    assert thinking.type == "reasoning"
    assert [part.text for part in thinking.content or []] == [THOUGHT]
    assert message.type == "message" and response.output_text == ANSWER


def test_reasoning_effort_reaches_the_chat_template(
    gpt_oss: tuple[openai.OpenAI, FakeWorker],
) -> None:
    """OpenAI's `reasoning_effort` (the Responses API's `reasoning.effort`) is given to
    the template, which gpt-oss's writes into its system message."""
    client, worker = gpt_oss
    worker.set_script(ANALYSIS + FINAL)

    def prompt() -> str:
        ids = worker.received[-1].prompt_token_ids
        return worker.tokenizer.decode(ids, skip_special_tokens=False)

    client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert "Reasoning: medium" in prompt()
    client.chat.completions.create(model=MODEL, messages=MESSAGES, reasoning_effort="high")
    assert "Reasoning: high" in prompt()
    client.responses.create(model=MODEL, input="Weather?", reasoning={"effort": "low"})
    assert "Reasoning: low" in prompt()
    with pytest.raises(openai.BadRequestError, match=r"reasoning\.effort") as refused:
        client.responses.create(model=MODEL, input="Weather?", reasoning={"effort": "minimal"})
    assert refused.value.param == "reasoning.effort"  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError, match="reasoning_effort"):
        client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            reasoning_effort="extreme",  # type: ignore[arg-type]
        )


def test_an_earlier_turns_reasoning_goes_back_as_its_thinking(
    gpt_oss: tuple[openai.OpenAI, FakeWorker],
) -> None:
    """A tool loop sends the calling turn back with the `reasoning` the answer carried;
    gpt-oss's template reads it as `thinking` (its analysis message)."""
    client, worker = gpt_oss
    worker.set_script(ANALYSIS + CALL)
    first = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS)
    turn = first.choices[0].message.model_dump(exclude_none=True)
    assert turn["reasoning"] == THOUGHT and turn["tool_calls"]
    call_id = turn["tool_calls"][0]["id"]
    result = {"role": "tool", "tool_call_id": call_id, "content": "sunny"}
    worker.set_script(FINAL)
    client.chat.completions.create(model=MODEL, messages=[*MESSAGES, turn, result], tools=TOOLS)
    prompt = worker.tokenizer.decode(
        worker.received[-1].prompt_token_ids, skip_special_tokens=False
    )
    assert f"<|channel|>analysis<|message|>{THOUGHT}<|end|>" in prompt
