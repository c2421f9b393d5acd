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


def test_what_cannot_fit_is_left_for_the_length_check(tokenizer: Tokenizer) -> None:
    body = request([{"role": "system", "content": "sys"}, {"role": "user", "content": "x " * 50}])
    fitted, prompt_ids = fit_context(tokenizer, body, 5)
    assert [m.role for m in fitted.messages] == ["system", "user"]
    assert len(prompt_ids) > 5
