"""The shared chat pipeline's pure parts: fitting a conversation into the context."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.chat_generation import fit_context, render_chat
from api.schemas.chat import ChatCompletionRequest
from engine.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer(bundled_model_dir: Path) -> Tokenizer:
    return Tokenizer.load(bundled_model_dir)


CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def request(messages: list[dict]) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": messages})


def test_oldest_turns_go_first_and_a_tool_result_goes_with_its_call(
    tokenizer: Tokenizer,
) -> None:
    body = request(
        [
            {"role": "system", "content": "sys"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "c1", "content": "result " * 30},
            {"role": "user", "content": "newer " * 10},
            {"role": "user", "content": "last"},
        ]
    )
    whole = len(render_chat(tokenizer, body))
    fitted, prompt_ids = fit_context(tokenizer, body, whole - 1)
    assert [m.role for m in fitted.messages] == ["system", "user", "user"]
    assert prompt_ids == render_chat(tokenizer, fitted)
    assert len(body.messages) == 5  # the caller's request is left as it was

    same, ids = fit_context(tokenizer, body, whole)
    assert same is body and len(ids) == whole


def test_an_agent_turn_keeps_its_calls_and_results_together(tokenizer: Tokenizer) -> None:
    second = {**CALL, "id": "c2"}
    old_turns = [
        message
        for n in range(6)
        for message in (
            {"role": "user", "content": f"old question {n} " + "pad " * 20},
            {"role": "assistant", "content": f"old answer {n}"},
        )
    ]
    last_turn = [
        {"role": "user", "content": "Weather and time?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL, second]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "noon"},
    ]
    body = request([{"role": "system", "content": "sys"}, *old_turns, *last_turn])
    budget = len(render_chat(tokenizer, request([body.messages[0], *old_turns[-4:], *last_turn])))
    fitted, prompt_ids = fit_context(tokenizer, body, budget)
    kept = [m.model_dump(exclude_none=True) for m in fitted.messages]
    assert kept[-4:] == [{k: v for k, v in m.items() if v is not None} for m in last_turn]
    assert kept[0]["role"] == "system"
    assert [m["content"].split(" pad")[0] for m in kept[1:-4]] == [
        "old question 4",
        "old answer 4",
        "old question 5",
        "old answer 5",
    ]
    assert len(prompt_ids) <= budget

    alone = request([{"role": "system", "content": "sys"}, *last_turn])
    same, _ = fit_context(tokenizer, alone, 3)  # one turn: nothing to drop
    assert same is alone


def test_an_assistant_turn_of_only_calls_renders(tokenizer: Tokenizer) -> None:
    """A template indexes `content`; a turn of calls has none (vLLM sends "")."""
    body = request(
        [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ]
    )
    assert "sunny" in tokenizer.decode(render_chat(tokenizer, body))


def test_what_cannot_fit_is_left_for_the_length_check(tokenizer: Tokenizer) -> None:
    body = request([{"role": "system", "content": "sys"}, {"role": "user", "content": "x " * 50}])
    fitted, prompt_ids = fit_context(tokenizer, body, 5)
    assert [m.role for m in fitted.messages] == ["system", "user"]
    assert len(prompt_ids) > 5
