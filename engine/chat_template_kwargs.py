"""What may reach a chat template as kwargs: a request's `chat_template_kwargs` laid over
the server's --default-chat-template-kwargs (vLLM's order: the request wins).

Why a module apart from the tokenizer: settings check the server's defaults at start-up
without importing transformers, and the tokenizer refuses the same names per request.
The usual default is a thinking switch, e.g. `{"enable_thinking": false}` for Qwen3.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.json_flag import json_object_flag

# apply_chat_template parameters that template kwargs must not override: they would
# change what we render or how, not what the template sees (and `messages`, what
# Tokenizer.render_chat takes them as).
RESERVED_TEMPLATE_KWARGS = frozenset(
    {
        "messages",
        "conversation",
        "tools",
        "chat_template",
        "add_generation_prompt",
        "tokenize",
        "sanitize_control_tokens",
        "padding",
        "truncation",
        "max_length",
        "return_tensors",
        "return_dict",
        "return_assistant_tokens_mask",
        "tokenizer_kwargs",
    }
)

DEFAULTS_FLAG = "--default-chat-template-kwargs"


def reserved_in(kwargs: Mapping[str, Any]) -> list[str]:
    """The names in `kwargs` a template may not be given, sorted."""
    return sorted(RESERVED_TEMPLATE_KWARGS.intersection(kwargs))


def refuse_reserved(kwargs: Mapping[str, Any]) -> None:
    """A ValueError naming what `kwargs` may not set, before they are spread into a call
    whose own parameters (tools, add_generation_prompt) they would collide with."""
    reserved = reserved_in(kwargs)
    if reserved:
        raise ValueError(f"chat_template_kwargs may not set {reserved}")


def parse_default_template_kwargs(value: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """The server's defaults as a dict ({} when unset); a ValueError naming the flag when
    they are not a JSON object or set a reserved name."""
    defaults = json_object_flag(value, DEFAULTS_FLAG)
    reserved = reserved_in(defaults)
    if reserved:
        raise ValueError(f"{DEFAULTS_FLAG} may not set {reserved}")
    return defaults


def with_defaults(
    defaults: Mapping[str, Any] | None, requested: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """The request's kwargs over the server's defaults, key by key; None when both are
    empty (the request's own None stays None)."""
    if not defaults:
        return dict(requested) if requested is not None else None
    return {**defaults, **(requested or {})}
