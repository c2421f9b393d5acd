"""Objects that list their properties allow no others, unless they say so or share them."""

from __future__ import annotations

from typing import Any

from engine.closed_json_objects import close_objects

A = {"a": {"type": "string"}}
B = {"b": {"type": "integer"}}


def closed(**schema: Any) -> dict[str, Any]:
    return {**schema, "additionalProperties": False}


def test_objects_with_properties_are_closed_wherever_they_sit() -> None:
    schema = {
        "type": "object",
        "properties": {
            "one": {"type": "object", "properties": A},
            "many": {"type": "array", "items": {"type": "object", "properties": B}},
            "either": {"anyOf": [{"type": "object", "properties": A}, {"type": "null"}]},
            "named": {"$ref": "#/$defs/Named"},
        },
        "$defs": {"Named": {"type": "object", "properties": B}},
    }
    assert close_objects(schema) == closed(
        type="object",
        properties={
            "one": closed(type="object", properties=A),
            "many": {"type": "array", "items": closed(type="object", properties=B)},
            "either": {"anyOf": [closed(type="object", properties=A), {"type": "null"}]},
            "named": {"$ref": "#/$defs/Named"},
        },
        **{"$defs": {"Named": closed(type="object", properties=B)}},
    )
    assert "additionalProperties" not in schema  # the caller's schema is left as it was


def test_what_a_schema_says_about_other_properties_is_kept() -> None:
    for stated in (True, {"type": "integer"}, False):
        schema = {"type": "object", "properties": A, "additionalProperties": stated}
        assert close_objects(schema) == schema
    unevaluated = {"type": "object", "properties": A, "unevaluatedProperties": True}
    assert close_objects(unevaluated) == unevaluated


def test_objects_whose_properties_other_subschemas_list_stay_open() -> None:
    # allOf: each part lists some of one object's properties; closing either refuses the other's.
    parts = {"allOf": [{"properties": A}, {"properties": B}]}
    assert close_objects(parts) == parts
    # Properties beside alternatives: an alternative must allow the outer ones too.
    beside = {"properties": A, "anyOf": [{"properties": B}, {"required": ["a"]}]}
    assert close_objects(beside) == beside
    conditional = {"properties": A, "if": {"properties": B}, "then": {"required": ["b"]}}
    assert close_objects(conditional) == conditional
    ref_beside = {"$ref": "#/$defs/Base", "properties": A, "$defs": {"Base": {"properties": B}}}
    assert close_objects(ref_beside)["properties"] == A
    assert "additionalProperties" not in close_objects(ref_beside)


def test_a_property_named_like_a_keyword_is_a_property() -> None:
    schema = {"type": "object", "properties": {"properties": {"type": "object"}}}
    assert close_objects(schema) == closed(**schema)


def test_objects_that_list_no_properties_stay_open() -> None:
    for schema in ({"type": "object"}, {"type": "object", "required": ["a"]}, {}):
        assert close_objects(schema) == schema
