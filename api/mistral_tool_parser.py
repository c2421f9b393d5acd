"""The "mistral" tool-call parser: calls after Mistral's `[TOOL_CALLS]` token.

Two syntaxes follow the token:
- Mistral 7B Instruct v0.3 (tokenizers before v11): one JSON list,
  `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`;
- v11 and later (Mistral Small 3.1+, Devstral, Magistral): one token per call,
  `[TOOL_CALLS]name[ARGS]{...}`, with `[CALL_ID]id` before `[ARGS]` in v13.

Text before the first `[TOOL_CALLS]` is content and streams at once (a suffix
that could begin the token is held back); what follows is read as calls when
the answer ends. If it is not all calls it goes out as text, so nothing the
model wrote is lost. `[TOOL_CALLS]` is a special token, which detokenizing
would drop, so requests this parser reads keep special tokens
(`needs_special_tokens`). Mistral's chat templates accept only 9-character
alphanumeric call ids, so the calls get such ids (a model's own, if valid).
"""

from __future__ import annotations

import json
import re
import secrets
import string
from dataclasses import dataclass, field
from typing import Any

from api.tool_call_json import call_from_object, marker_prefix_len
from api.tool_choice import tool_call

TOOL_CALLS = "[TOOL_CALLS]"
ARGS = "[ARGS]"
CALL_ID = "[CALL_ID]"
_ID_ALPHABET = string.ascii_letters + string.digits
_VALID_ID = re.compile(r"^[A-Za-z0-9]{9}$")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_DECODER = json.JSONDecoder()


def mistral_call_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(9))


def mistral_id(call_id: str) -> str:
    """A client's call id as Mistral's templates accept it: its last 9 characters (as vLLM
    trims them), or a new id if those are not alphanumeric."""
    tail = call_id[-9:]
    return tail if _valid_id(tail) else mistral_call_id()


def with_mistral_ids(messages: list[Any]) -> list[Any]:
    """The conversation with every call id (assistant calls, tool results) in Mistral's
    form, the same id mapped the same way, so each result still names its call."""
    mapped: dict[str, str] = {}

    def short(call_id: str) -> str:
        if call_id not in mapped:
            mapped[call_id] = call_id if _valid_id(call_id) else mistral_id(call_id)
        return mapped[call_id]

    out = []
    for message in messages:
        update: dict[str, Any] = {}
        if message.tool_calls:
            update["tool_calls"] = [
                {**call, "id": short(call["id"])} if isinstance(call.get("id"), str) else call
                for call in message.tool_calls
            ]
        if message.tool_call_id is not None:
            update["tool_call_id"] = short(message.tool_call_id)
        out.append(message.model_copy(update=update) if update else message)
    return out


@dataclass
class MistralStream:
    # The token is special: detokenizing must keep it for this parser to see it.
    needs_special_tokens = True

    calls: int = 0
    pending: str = ""  # held back: a suffix that could begin TOOL_CALLS
    in_calls: bool = False
    _tail: list[str] = field(default_factory=list)

    def feed(self, text: str, final: bool) -> tuple[dict[str, Any], bool]:
        """Delta fields for this text, and whether any tool call was made so far."""
        fields: dict[str, Any] = {}
        if self.in_calls:
            self._tail.append(text)
        else:
            buffer, self.pending = self.pending + text, ""
            start = buffer.find(TOOL_CALLS)
            if start < 0:
                keep = 0 if final else marker_prefix_len(buffer, TOOL_CALLS)
                self.pending = buffer[len(buffer) - keep :]
                content = buffer[: len(buffer) - keep]
                return ({"content": content} if content else {}), False
            if buffer[:start]:
                fields["content"] = buffer[:start]
            self.in_calls = True
            self._tail = [buffer[start:]]
        if not final:
            return fields, False
        tail = "".join(self._tail)
        calls = read_calls(tail)
        if calls is None:  # not calls after all: the text goes out as it was written
            fields["content"] = fields.get("content", "") + tail
            return fields, False
        if not fields.get("content", "").strip():
            fields.pop("content", None)  # whitespace before the calls is not content
        self.calls = len(calls)
        fields["tool_calls"] = [{"index": i, **c} for i, c in enumerate(calls)]
        return fields, True


def read_calls(text: str) -> list[dict[str, Any]] | None:
    """Every call in `text` (which starts with TOOL_CALLS), or None unless it is all calls."""
    segments = [s.strip() for s in text.split(TOOL_CALLS)[1:]]
    if len(segments) == 1 and segments[0][:1] in ("[", "{"):
        return _json_calls(segments[0])
    calls = [_named_call(segment) for segment in segments]
    return None if not calls or any(c is None for c in calls) else calls  # type: ignore[return-value]


def _json_calls(body: str) -> list[dict[str, Any]] | None:
    """Before v11: a JSON list of {"name", "arguments"} objects (or one object)."""
    try:
        data, end = _DECODER.raw_decode(body)
    except (ValueError, RecursionError):
        return None
    if body[end:].strip():
        return None
    items = data if isinstance(data, list) else [data]
    calls = []
    for item in items:
        call = call_from_object(item)
        if call is None:
            return None
        own = item.get("id")
        calls.append({**call, "id": own if _valid_id(own) else mistral_call_id()})
    return calls or None


def _named_call(segment: str) -> dict[str, Any] | None:
    """v11+: `name[ARGS]{...}`, or `name[CALL_ID]id[ARGS]{...}`."""
    head, separator, arguments = segment.partition(ARGS)
    if not separator:
        return None
    name, _, own_id = head.partition(CALL_ID)
    name, own_id = name.strip(), own_id.strip()
    if not _NAME.match(name):
        return None
    try:
        data, end = _DECODER.raw_decode(arguments.strip())
    except (ValueError, RecursionError):
        return None
    if arguments.strip()[end:].strip() or not isinstance(data, dict):
        return None
    call = tool_call(name, json.dumps(data, ensure_ascii=False))
    return {**call, "id": own_id if _valid_id(own_id) else mistral_call_id()}


def _valid_id(value: object) -> bool:
    return isinstance(value, str) and bool(_VALID_ID.match(value))
