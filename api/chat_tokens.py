"""Chat messages to prompt token ids for endpoints that only read them (vLLM's chat forms
of /tokenize and /v1/embeddings): the chat template, then the tokenizer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from api.errors import ApiError
from api.schemas.chat import ChatMessage
from engine.chat_template_kwargs import refuse_reserved
from engine.tokenizer import Tokenizer

# Where an assistant message may carry its thinking: our answers' and vLLM's fields, and
# the name gpt-oss's chat template reads.
THOUGHT_KEYS = ("reasoning", "reasoning_content", "thinking")


def template_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as chat templates read them, the same for every endpoint that renders them
    (a /tokenize count is the chat request's): `content` always present, since templates
    index it and an assistant turn of only tool calls (or a null content) has none
    (vLLM's ""); thinking under each name templates read it by, `reasoning_content`
    (Qwen3's) or `thinking` (gpt-oss's)."""
    out = [m.model_dump(exclude_none=True) for m in messages]
    for message in out:
        message.setdefault("content", "")
        thought = next((message[k] for k in THOUGHT_KEYS if message.get(k)), None)
        if message.get("role") == "assistant" and isinstance(thought, str):
            for key in THOUGHT_KEYS:
                message.setdefault(key, thought)
    return out


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
    text = rendered_chat(
        tokenizer, messages, add_generation_prompt=add_generation_prompt, tools=tools, kwargs=kwargs
    )
    return tokenizer.encode(text, add_special_tokens=add_special_tokens)


def rendered_chat(
    tokenizer: Tokenizer,
    messages: Sequence[ChatMessage],
    *,
    add_generation_prompt: bool,
    tools: list[dict[str, Any]] | None,
    kwargs: Mapping[str, Any],
    param: str = "messages",
) -> str:
    """The messages through the model's chat template. Kwargs naming what the call sets
    itself (tools, add_generation_prompt, ...) are a 400 naming `chat_template_kwargs`
    before they could collide with it; a template that cannot render the messages is a
    400 naming `param`."""
    try:
        refuse_reserved(kwargs)
    except ValueError as exc:
        raise ApiError(400, str(exc), param="chat_template_kwargs") from None
    try:
        return tokenizer.render_chat(
            template_messages(messages),
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            **kwargs,
        )
    except ValueError as exc:
        raise ApiError(400, str(exc), param=param) from None
