"""A flag whose value is a JSON object (vLLM's --hf-overrides, --override-generation-config,
--default-chat-template-kwargs): one parse, and one way of saying what is wrong with it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def json_object_flag(
    value: str | Mapping[str, Any] | None, flag: str, error: type[ValueError] = ValueError
) -> dict[str, Any]:
    """`value` (JSON text, or a mapping already) as a dict; {} when unset. `error` (a
    ValueError) names `flag` when the text is not JSON or not an object."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise error(f"{flag} is not JSON: {exc}") from None
    if not isinstance(value, Mapping):
        raise error(f"{flag} must be a JSON object, got {value!r}")
    return dict(value)
