"""An explicit null is the field left out, unless the field can hold None or is required."""

from __future__ import annotations

import pytest
from pydantic import Field, ValidationError

from api.schemas.chat import ChatCompletionRequest
from api.schemas.null_means_default import NullMeansDefault
from api.schemas.responses import ResponsesRequest

MESSAGES = [{"role": "user", "content": "Hi"}]


class _Body(NullMeansDefault):
    required: int
    count: int = 3
    maybe: int | None = 5
    aliased: str = Field(default="x", alias="schema")


def test_null_gives_the_default_and_optional_fields_keep_it() -> None:
    body = _Body.model_validate({"required": 1, "count": None, "maybe": None, "schema": None})
    assert (body.count, body.maybe, body.aliased) == (3, None, "x")


def test_a_required_field_still_refuses_null() -> None:
    with pytest.raises(ValidationError, match="required"):
        _Body.model_validate({"required": None})


def test_other_bad_values_are_still_refused() -> None:
    with pytest.raises(ValidationError, match="count"):
        _Body.model_validate({"required": 1, "count": "many"})


def test_openai_nullable_fields_of_chat_and_responses() -> None:
    chat = ChatCompletionRequest.model_validate(
        {"messages": MESSAGES, "n": None, "stream": None, "logprobs": None, "echo": None}
    )
    assert (chat.n, chat.stream, chat.logprobs, chat.echo) == (1, False, False, False)
    nested = ChatCompletionRequest.model_validate(
        {"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": None}}
    )
    assert nested.stream_options is not None and nested.stream_options.include_usage is False
    responses = ResponsesRequest.model_validate({"input": "Hi", "store": None, "stream": None})
    assert (responses.store, responses.stream) == (True, False)
