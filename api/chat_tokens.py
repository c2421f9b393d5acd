"""Chat messages to prompt token ids for endpoints that only read them (vLLM's chat forms
of /tokenize and /v1/embeddings): the chat template, then the tokenizer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from api.errors import ApiError
from api.schemas.chat import ChatMessage
from engine.tokenizer import Tokenizer


def chat_token_ids(
    tokenizer: Tokenizer,
    messages: Sequence[ChatMessage],
    *,
    add_generation_prompt: bool,
    continue_final_message: bool,
    add_special_tokens: bool,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> list[int]:
    """The messages rendered by the model's chat template and tokenized; a template that
    cannot render them is a 400 naming `messages`."""
    kwargs: dict[str, Any] = dict(chat_template_kwargs or {})
    if continue_final_message:
        kwargs["continue_final_message"] = True
    try:
        text = tokenizer.render_chat(
            [m.model_dump(exclude_none=True) for m in messages],
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            **kwargs,
        )
    except ValueError as exc:
        raise ApiError(400, str(exc), param="messages") from None
    return tokenizer.encode(text, add_special_tokens=add_special_tokens)
