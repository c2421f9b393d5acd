"""Read `tool_choice: "required"` output, a JSON array of `{"name", "parameters"}`, as it grows.

The engine generates under that schema, so the text is always a prefix of valid
JSON. Reading it character by character lets a stream send each call as
OpenAI does, the call's id and name once the name is complete, then its
arguments (the raw text of `parameters`) piece by piece, instead of holding
everything back until the array closes. It also recovers what a `max_tokens`
cut leaves: the calls already complete, and the last one with the arguments
written so far, as a named call cut short keeps its partial arguments. A whole
answer reads its calls here too, so its arguments are the streamed text exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from api.tool_choice import tool_call

# Object depth inside the array: 1 between calls, 2 at a call's own keys.
_CALL_DEPTH = 2


@dataclass
class _Call:
    name: str | None = None
    arguments: str = ""  # the raw text of "parameters" so far
    complete: bool = False
    sent: int = -1  # arguments characters streamed; -1: the call is not announced yet
    call: dict[str, Any] = field(default_factory=dict)  # id and type, fixed once named


class RequiredCallsReader:
    """Feed text as it arrives; `feed` returns OpenAI tool-call deltas for it."""

    def __init__(self) -> None:
        self.calls: list[_Call] = []
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._string_role: Literal["key", "name", "arguments"] | None = None
        self._buffer: list[str] = []
        self._key: str | None = None
        self._expect: Literal["key", "value"] | None = None
        self._capturing = False
        self._scalar = False  # capturing a bare number / true / false / null

    def feed(self, text: str) -> list[dict[str, Any]]:
        for char in text:
            self._step(char)
        return self._deltas()

    def tool_calls(self) -> list[dict[str, Any]]:
        """Every named call so far, as `tool_calls` entries, each with its arguments as the
        model wrote them (what a stream of the same text sends, so the two agree to the
        character), an unfinished last one with those written before the cut."""
        out = []
        for call in self.calls:
            if call.name is None:
                continue
            arguments = call.arguments or ("{}" if call.complete else "")
            out.append(
                {**self._identity(call), "function": {"name": call.name, "arguments": arguments}}
            )
        return out

    def _identity(self, call: _Call) -> dict[str, Any]:
        if not call.call:
            made = tool_call(call.name or "", "")
            call.call = {"id": made["id"], "type": made["type"]}
        return call.call

    def _deltas(self) -> list[dict[str, Any]]:
        deltas = []
        for index, call in enumerate(self.calls):
            if call.name is None:
                break  # calls are written in order: nothing after an unnamed one yet
            if call.sent < 0:
                call.sent = len(call.arguments)
                function = {"name": call.name, "arguments": call.arguments}
                deltas.append({"index": index, **self._identity(call), "function": function})
            elif len(call.arguments) > call.sent:
                piece = call.arguments[call.sent :]
                call.sent = len(call.arguments)
                deltas.append({"index": index, "function": {"arguments": piece}})
        return deltas

    def _step(self, char: str) -> None:
        if self._in_string:
            self._string_char(char)
            return
        if self._capturing:
            if self._scalar and (char in ",}" or char.isspace()):
                self._end_value()  # the character belongs to the call's object: read on
            else:
                self._capture(char)
                return
        if char.isspace():
            return
        at_call = self._depth == _CALL_DEPTH
        if at_call and self._expect == "value" and self._key == "parameters":
            self._capturing = True
            self._scalar = char not in '[{"'
            self._capture(char)
            return
        if char == '"':
            self._open_string(at_call)
        elif char in "[{":
            self._depth += 1
            if self._depth == _CALL_DEPTH:
                self.calls.append(_Call())
                self._expect = "key"
        elif char in "]}":
            if at_call and self.calls:
                self.calls[-1].complete = True
            self._depth -= 1
        elif at_call and char == ":":
            self._expect = "value"
        elif at_call and char == ",":
            self._expect = "key"

    def _capture(self, char: str) -> None:
        """A character of the parameters value: kept, and the value's end found."""
        self.calls[-1].arguments += char
        if char == '"':
            self._in_string, self._string_role = True, "arguments"
        elif char in "[{":
            self._depth += 1
        elif char in "]}":
            self._depth -= 1
            if self._depth == _CALL_DEPTH:
                self._end_value()

    def _open_string(self, at_call: bool) -> None:
        self._in_string = True
        self._buffer = []
        self._string_role = None
        if at_call and self._expect == "key":
            self._string_role = "key"
        elif at_call and self._expect == "value" and self._key == "name":
            self._string_role = "name"

    def _string_char(self, char: str) -> None:
        role = self._string_role
        closing = char == '"' and not self._escape
        self._escape = not self._escape and char == "\\"
        if role == "arguments":
            self.calls[-1].arguments += char
        elif not closing:
            self._buffer.append(char)
        if not closing:
            return
        self._in_string = False
        if role == "key":
            self._key = _decode("".join(self._buffer))
        elif role == "name":
            self.calls[-1].name = _decode("".join(self._buffer))
            self._expect = None
        elif role == "arguments" and self._depth == _CALL_DEPTH:
            self._end_value()  # a string as the whole parameters value

    def _end_value(self) -> None:
        self._capturing = self._scalar = False
        self._expect = None


def _decode(raw: str) -> str:
    try:
        decoded = json.loads(f'"{raw}"')
    except ValueError:
        return raw
    return decoded if isinstance(decoded, str) else raw
