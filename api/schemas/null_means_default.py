"""Request bodies where an explicit JSON `null` means "not set".

OpenAI types most request fields "X or null" (chat `n`, `logprobs`, `stream`;
completions `echo`; responses `store`, ...), and vLLM declares them Optional, so
SDK wrappers that pass every keyword through (`stream=kwargs.get("stream")`) send
`null`. Our fields that cannot hold None would refuse that with a 400; dropping the
null before validation gives the field its default instead. Fields that can hold
None keep the null, and required fields keep it too, so their error names the field.
"""

from __future__ import annotations

import types
from functools import cache
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, model_validator


def _admits_none(annotation: Any) -> bool:
    """Whether a field of this type can hold None (Any, Optional, a union with None)."""
    if annotation is Any or annotation is None or annotation is type(None):
        return True
    origin = get_origin(annotation)
    if origin is Annotated:
        return _admits_none(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return any(_admits_none(arg) for arg in get_args(annotation))
    return False


@cache
def _defaulted_keys(model: type[BaseModel]) -> frozenset[str]:
    """The body keys (names and aliases) whose null is dropped: optional, None not allowed."""
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        if field.is_required() or _admits_none(field.annotation):
            continue
        keys.add(name)
        if field.alias:
            keys.add(field.alias)
        if isinstance(field.validation_alias, str):
            keys.add(field.validation_alias)
    return frozenset(keys)


class NullMeansDefault(BaseModel):
    """Base for request bodies: `"field": null` is the field left out."""

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls_for_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        keys = _defaulted_keys(cls)
        if not any(data.get(key, ...) is None for key in keys):
            return data
        return {key: value for key, value in data.items() if value is not None or key not in keys}
