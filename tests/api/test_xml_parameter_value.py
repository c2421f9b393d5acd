"""Bare-text tool arguments typed by their schema, as vLLM's qwen3_coder parser types
them (the parser's own tests read them out of whole calls)."""

from __future__ import annotations

from typing import Any

import pytest

from api.xml_parameter_value import declared_type, is_text, typed_value

PARAMETERS = {
    "$defs": {"Mode": {"type": "string", "enum": ["r", "w"]}},
    "properties": {
        "n": {"type": "integer"},
        "maybe": {"anyOf": [{"type": "null"}, {"type": "number"}]},
        "listed": {"type": ["boolean", "null"]},
        "mode": {"$ref": "#/$defs/Mode"},
        "loop": {"$ref": "#/properties/loop"},
        "free": {"description": "no type"},
    },
}


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("n", "integer"),
        ("maybe", "number"),
        ("listed", "boolean"),
        ("mode", "string"),
        ("loop", "string"),  # a reference to itself ends, as text
        ("free", "string"),
        ("absent", "string"),
    ],
)
def test_declared_types(name: str, kind: str) -> None:
    assert declared_type(PARAMETERS, name) == kind


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("Null", "integer", None),
        ("007", "int64", 7),
        ("1e3", "float", 1000),
        ("nan", "number", "nan"),
        ("yes", "bool", False),  # vLLM's rule: anything but "true" is false
        ('{"a": [1]}', "object", {"a": [1]}),
        ("(1, 2)", "array", [1, 2]),
        ("b'x'", "array", "b'x'"),  # bytes are no JSON value
        ("NaN", "object", "NaN"),  # nor is NaN, which Python's json reads
        ("[1e999]", "array", "[1e999]"),
        ("3", "mystery", 3),  # an unknown type: a literal, else text (vLLM's rule)
        ("true", "date", "true"),  # JSON's spelling is no Python literal
        ("plain words", "mystery", "plain words"),
        ("1or 2", "mystery", "1or 2"),
    ],
)
def test_typed_values(text: str, kind: str, value: Any) -> None:
    assert typed_value(text, kind) == value
    assert type(typed_value(text, kind)) is type(value)


def test_only_text_types_stream_as_text() -> None:
    assert is_text("string") and is_text("enum")
    assert not is_text("integer") and not is_text("object")
