"""JSON schemas' objects closed to properties they do not list, unless they say otherwise.

JSON Schema lets an object carry any property its schema does not forbid, and
llguidance generates by the letter: a model asked for `{"a": ...}` may go on with
`"b"`, `"c"`, ... until max_tokens. `vllm serve` gives none of that by default (its
xgrammar backend treats an unstated `additionalProperties` as false), OpenAI's strict
mode demands `"additionalProperties": false`, and applications' schemas (pydantic's
included) mostly leave it out. So an object schema that lists properties and states
no `additionalProperties` is closed here; `"additionalProperties": true` (or a schema)
keeps one open.

Only objects that stand alone are closed: with `allOf`, or properties beside an
`anyOf` / `oneOf` / `$ref` / conditional, several subschemas list one object's
properties between them, and closing any one would refuse the others' properties.
"""

from __future__ import annotations

import copy
from typing import Any

# Where subschemas sit: keywords whose value is a subschema (or a list of them), and
# keywords whose value maps names to subschemas.
_SUBSCHEMAS = (
    "items",
    "additionalItems",
    "prefixItems",
    "contains",
    "not",
    "unevaluatedItems",
    "additionalProperties",
)
_MAPS = ("properties", "patternProperties", "$defs", "definitions")
# Alternatives: each describes the whole object (unless the schema around them lists
# properties of its own, which every alternative would then have to allow).
_ALTERNATIVES = ("anyOf", "oneOf")
# Subschemas that add to the schema around them, describing the same object with it.
_PARTS = ("allOf", "if", "then", "else")
# A schema with any of these is left open: it says what else it allows, or others list
# its object's properties with it.
_LEAVE_OPEN = (
    "additionalProperties",
    "unevaluatedProperties",
    "$ref",
    "dependentSchemas",
    *_ALTERNATIVES,
    *_PARTS,
)


def close_objects(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of `schema` with its stand-alone object schemas closed (see the module)."""
    closed = copy.deepcopy(schema)
    _close(closed, closable=True)
    return closed


def _lists_properties(node: dict[str, Any]) -> bool:
    return "properties" in node or "patternProperties" in node


def _each(value: Any) -> list[Any]:
    """A keyword's subschemas: one schema, or a list of them."""
    return value if isinstance(value, list) else [value]


def _close(node: Any, closable: bool) -> None:
    if not isinstance(node, dict):
        return
    for key in _SUBSCHEMAS:
        for sub in _each(node.get(key)):
            _close(sub, closable=True)
    for key in _MAPS:
        members = node.get(key)
        for member in members.values() if isinstance(members, dict) else []:
            _close(member, closable=True)
    alternatives_closable = not _lists_properties(node) and "unevaluatedProperties" not in node
    for key in _ALTERNATIVES:
        for sub in _each(node.get(key)):
            _close(sub, closable=alternatives_closable)
    for key in _PARTS:
        for sub in _each(node.get(key)):
            _close(sub, closable=False)
    dependent = node.get("dependentSchemas")
    for sub in dependent.values() if isinstance(dependent, dict) else []:
        _close(sub, closable=False)
    if closable and _lists_properties(node) and not any(key in node for key in _LEAVE_OPEN):
        node["additionalProperties"] = False
