"""Forced tool calls: the schema generated under, and the tools refused as OpenAI does."""

from __future__ import annotations

import json

import pytest

from api.errors import ApiError
from api.tool_choice import forced_tool_call


def _tools(parameters: object) -> list[dict]:
    return [{"type": "function", "function": {"name": "now", "parameters": parameters}}]


NAMED = {"type": "function", "function": {"name": "now"}}


@pytest.mark.parametrize(
    ("parameters", "closed"),
    [({}, {}), ({"properties": {"tz": {"type": "string"}}}, {"additionalProperties": False})],
)
def test_a_schema_without_a_type_still_makes_the_arguments_an_object(
    parameters: dict, closed: dict
) -> None:
    """QA: `parameters: {}` let a named call's arguments be the string '"Hangover"'.
    (Listed properties are the only ones allowed: engine/closed_json_objects.py.)"""
    named = forced_tool_call(_tools(parameters), NAMED, None)
    assert named is not None
    assert json.loads(named.constraint.spec) == {"type": "object", **parameters, **closed}
    required = forced_tool_call(_tools(parameters), "required", None)
    assert required is not None
    variant = json.loads(required.constraint.spec)["items"]["anyOf"][0]
    assert variant["properties"]["parameters"]["type"] == "object"


def test_a_schema_of_another_type_is_refused() -> None:
    with pytest.raises(ApiError) as raised:
        forced_tool_call(_tools({"type": "string"}), NAMED, None)
    assert raised.value.status == 400
    assert raised.value.param == "tools[0].function.parameters"
    assert "type 'object', got type \"string\"" in raised.value.message
