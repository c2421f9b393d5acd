"""Forced tool calls: `tool_choice` "required" or a named function, through structured output.

When the client forces a call, the answer's shape is known before generation:
the named function's arguments (its `parameters` schema), or for "required" a
JSON array of `{"name", "parameters"}` objects, one of the tools each. The
engine generates under that JSON schema, so the arguments always parse, and
no model-specific tool-call parser is needed (vLLM does the same for these two
modes). "auto", where the model decides whether to call at all, needs a parser
for the model's own tool-call syntax and is refused with a 400 that says so.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from api.errors import ApiError, not_supported
from api.schemas.structured_output import refused_as
from engine.structured_output import StructuredOutput

ANY_OBJECT: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ForcedToolCall:
    """What a request with a forced tool call generates, and how to read it back."""

    mode: Literal["named", "required"]
    constraint: StructuredOutput
    function_name: str | None = None  # the named mode's function

    def complete(self, text: str) -> bool:
        """Whether `text` is the whole answer: always for a named call (its arguments are
        kept as they are, also when cut short); for "required" only a complete array of
        calls, not one max_tokens cut."""
        if self.mode == "named":
            return True
        try:
            items = json.loads(text)
        except (ValueError, RecursionError):  # cut short, or past json's own limits
            return False
        return isinstance(items, list) and all(
            isinstance(i, dict) and isinstance(i.get("name"), str) for i in items
        )

    @property
    def finish_reason(self) -> str:
        """OpenAI's: "stop" for a call the client named, "tool_calls" when the model chose."""
        return "stop" if self.mode == "named" else "tool_calls"


def wants_auto(tools: list[dict[str, Any]] | None, tool_choice: Any) -> bool:
    """Tools offered and the model left to decide: "auto", or tool_choice left out."""
    return bool(tools) and tool_choice in (None, "auto")


CHAT_NAMED_TOOL_CHOICE = '{"type": "function", "function": {"name": ...}}'


def refuse_auto(named_form: str = CHAT_NAMED_TOOL_CHOICE) -> ApiError:
    """`named_form`: how the client's API spells a named tool_choice, for the hint."""
    return not_supported(
        "tool_choice",
        '"auto" tool choice (the model deciding whether to call a tool) without --tool-call-parser',
        f'start the server with --tool-call-parser, force a call with tool_choice "required" '
        f'or {named_form}, or send tool_choice "none"',
    )


def tool_call(name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def forced_tool_call(
    tools: list[dict[str, Any]] | None,
    tool_choice: str | dict[str, Any] | None,
    parallel_tool_calls: bool | None,
) -> ForcedToolCall | None:
    """The forced call `tool_choice` asks for; None for "none", "auto" or no tools. 400s for
    tools or a tool_choice that are malformed."""
    if tool_choice == "none" or (tool_choice is None and not tools):
        return None
    functions = _functions(tools)
    if tool_choice is None or tool_choice == "auto":
        return None
    if tool_choice == "required":
        # Each tool's definitions move to the root, where its "#/$defs/..." pointers
        # (pydantic's enums and nested models) resolve once the schema is nested.
        definitions: dict[str, dict[str, Any]] = {"$defs": {}, "definitions": {}}
        variants = [
            {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "enum": [name]},
                    "parameters": _hoist_definitions(name, parameters, definitions),
                },
                "required": ["name", "parameters"],
                "additionalProperties": False,
            }
            for name, parameters in functions.items()
        ]
        schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": variants}}
        schema.update({key: defs for key, defs in definitions.items() if defs})
        if parallel_tool_calls is False:
            schema["maxItems"] = 1
        return ForcedToolCall("required", _constraint(schema))
    name = _named(tool_choice)
    if name not in functions:
        raise ApiError(
            400,
            f"tool_choice names the function {name!r}, which is not in tools",
            param="tool_choice",
        )
    return ForcedToolCall("named", _constraint(functions[name]), function_name=name)


def _hoist_definitions(
    name: str, parameters: dict[str, Any], definitions: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """`parameters` without its $defs / definitions, which join the shared ones; two tools
    defining one name differently cannot share a root, and get a 400 saying so."""
    body = dict(parameters)
    for key, shared in definitions.items():
        own = body.pop(key, None)
        if own is None:
            continue
        if not isinstance(own, dict):
            raise ApiError(400, f"tool {name!r}: {key} must be an object", param="tools")
        for def_name, definition in own.items():
            if shared.setdefault(def_name, definition) != definition:
                raise ApiError(
                    400,
                    f'tools define "{key}/{def_name}" differently; with tool_choice '
                    '"required" their definitions must agree (rename one)',
                    param="tools",
                )
    return body


def function_parameters(tools: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """name -> parameters schema of each offered function (none: empty), for parsers
    that type a model's arguments by them; 400s for malformed tools."""
    return _functions(tools) if tools else {}


def _functions(tools: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """name -> parameters schema, checking the tools' shape as OpenAI does."""
    if not tools:
        raise ApiError(400, "tool_choice requires tools", param="tools")
    functions: dict[str, dict[str, Any]] = {}
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise ApiError(
                400, f"{where}: only tools of type 'function' are supported", param=where
            )
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ApiError(400, f"{where}.function.name is required", param=f"{where}.function")
        parameters = function.get("parameters")
        if parameters is None:
            parameters = ANY_OBJECT
        if not isinstance(parameters, dict):
            raise ApiError(
                400,
                f"{where}.function.parameters must be a JSON schema object",
                param=f"{where}.function.parameters",
            )
        functions[function["name"]] = _object_schema(parameters, f"{where}.function.parameters")
    return functions


def _object_schema(parameters: dict[str, Any], where: str) -> dict[str, Any]:
    """Arguments are a JSON object, as at OpenAI: `{}` (a function without arguments, as
    many tool libraries write it) says nothing, so generating under it gave a string or a
    list that clients' `json.loads(arguments)` then `fn(**args)` failed on."""
    kind = parameters.get("type")
    if kind is None:
        return {"type": "object", **parameters}
    if kind != "object":
        raise ApiError(
            400,
            f"{where} must be a JSON schema of type 'object', got type {json.dumps(kind)}",
            param=where,
        )
    return parameters


def _named(tool_choice: str | dict[str, Any]) -> str:
    function = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    if (
        not isinstance(tool_choice, dict)
        or tool_choice.get("type", "function") != "function"
        or not isinstance(function, dict)
        or not isinstance(function.get("name"), str)
    ):
        raise ApiError(
            400,
            'tool_choice must be "none", "auto", "required" or '
            '{"type": "function", "function": {"name": ...}}',
            param="tool_choice",
        )
    return str(function["name"])


def _constraint(schema: dict[str, Any]) -> StructuredOutput:
    with refused_as("tools"):
        return StructuredOutput.json_schema(schema)
