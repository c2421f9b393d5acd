"""A tool-call parameter written as bare text, typed by the tool's JSON schema.

Qwen3-Coder writes each argument as `<parameter=NAME>\\nTEXT\\n</parameter>`, with
no JSON quoting, so whether `42` is the number or the string depends on what the
tool declared. The rules are vLLM's (`qwen3_coder`), so a client moving from
`vllm serve` gets the same arguments: `null` is null whatever the type; strings
(and parameters the schema does not name) stay text; integers and numbers parse
(a number with no fraction becomes an integer); a boolean is true when it reads
`true` (any case), else false; objects and arrays are read as JSON, then as a
Python literal (single quotes, True/None), and any other type as a literal; what
none of these read stays text. Beyond vLLM: what is not JSON (sets, bytes, NaN)
stays text rather than failing the call, and `Optional[X]` (`anyOf` with null,
`"type": [X, "null"]`) and local `$ref`s type as X, since pydantic writes tools
that way.
"""

from __future__ import annotations

import ast
import json
import math
import warnings
from typing import Any

from conveyor.strict_json import strict_json_loads

_STRING_TYPES = {"string", "str", "text", "varchar", "char", "enum"}
_INTEGER_PREFIXES = ("int", "uint", "long", "short", "unsigned")
_NUMBER_PREFIXES = ("num", "float")
_BOOLEAN_TYPES = {"boolean", "bool", "binary"}
_CONTAINER_TYPES = ("object", "array", "arr", "dict", "list")


def declared_type(parameters: dict[str, Any] | None, name: str) -> str:
    """The type `parameters` (a function's schema) gives argument `name`, lower case;
    "string" for an argument it does not declare or types no way we read."""
    if not isinstance(parameters, dict):
        return "string"
    properties = parameters.get("properties")
    if not isinstance(properties, dict) or name not in properties:
        return "string"
    return _schema_type(properties[name], parameters, depth=0)


def is_text(kind: str) -> bool:
    """Whether a value of this declared type is the text as written (so it can stream)."""
    return kind in _STRING_TYPES


def typed_value(text: str, kind: str) -> Any:
    """The JSON value `text` stands for as an argument of type `kind`."""
    if text.lower() == "null":
        return None
    if is_text(kind):
        return text
    if kind.startswith(_INTEGER_PREFIXES):
        try:
            return int(text.strip())
        except ValueError:
            return text
    if kind.startswith(_NUMBER_PREFIXES):
        try:
            number = float(text.strip())
        except ValueError:
            return text
        if not math.isfinite(number):
            return text  # JSON has no NaN or infinity
        return int(number) if number.is_integer() else number
    if kind in _BOOLEAN_TYPES:
        return text.strip().lower() == "true"
    if kind.startswith(_CONTAINER_TYPES):
        try:
            return strict_json_loads(text)
        except (ValueError, RecursionError):
            pass
    return _literal(text)


def _literal(text: str) -> Any:
    """A Python literal's JSON value (single quotes, True/None, tuples), else the text."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "invalid decimal literal" on model text
            value = ast.literal_eval(text.strip())
        # As JSON and back: a tuple is a list; sets, bytes, complex and inf are not JSON.
        return json.loads(json.dumps(value, allow_nan=False))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return text


def _schema_type(schema: Any, root: dict[str, Any], depth: int) -> str:
    if not isinstance(schema, dict) or depth > 8:
        return "string"
    reference = schema.get("$ref")
    if isinstance(reference, str):
        return _schema_type(_resolve(reference, root), root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind is not None:
        return str(kind).strip().lower()
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list):
            for branch in branches:
                if not (isinstance(branch, dict) and branch.get("type") == "null"):
                    return _schema_type(branch, root, depth + 1)
    return "string"


def _resolve(reference: str, root: dict[str, Any]) -> Any:
    """A local `#/$defs/Name` (or `#/definitions/Name`) pointer's schema, else None."""
    node: Any = root
    if not reference.startswith("#/"):
        return None
    for part in reference[2:].split("/"):
        if not isinstance(node, dict):
            return None
        node = node.get(part.replace("~1", "/").replace("~0", "~"))
    return node
