"""The "qwen3_coder" tool-call parser: the XML-ish calls Qwen3-Coder writes.

    <tool_call>
    <function=write_file>
    <parameter=path>
    notes.txt
    </parameter>
    <parameter=content>
    two
    lines
    </parameter>
    </function>
    </tool_call>

Arguments are bare text, typed by the request's tool schemas
(`api/xml_parameter_value.py`), so this parser is built with them. As in vLLM's
parser, a block may hold several functions, a `<function=` without its
`<tool_call>` is still a call, a value ends at `</parameter>`, at the next
`<parameter=`, or where its function or block closes, and one newline on each
side of it is the layout's, not the value's. A call cut short (`max_tokens`) keeps the arguments
written so far, so its arguments are always a JSON object.

It streams as OpenAI streams calls: the call (id, name) once `<function=NAME>`
is complete, then its arguments as JSON text: each key once its name is
complete, a text value as it is written (JSON-escaped; a suffix that could be
a closing tag or the layout's newline is held back), any other value when it
ends. The whole answer is the same stream fed once, so both give the same
arguments, byte for byte `json.dumps` of the typed values. A `<tool_call>`
block with no function in it is read as a Hermes JSON call (Qwen3's own
format) or else kept as text, as is a `<function=` whose name does not close.
`SeedOssStream` ("seed_oss") reads the same calls in Seed-OSS's own block tags.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any, ClassVar

from api.tool_call_json import TextAroundCalls, call_from_json, marker_prefix_len
from api.tool_choice import tool_call
from api.xml_parameter_value import declared_type, is_text, typed_value

TOOL_CALL = "<tool_call>"
TOOL_CALL_END = "</tool_call>"
FUNCTION = "<function="
FUNCTION_END = "</function>"
PARAMETER = "<parameter="
PARAMETER_END = "</parameter>"
# A value ends at its closing tag, or where the next tag opens or its function closes
# (vLLM's lookaheads; `_value_ends` adds the parser's block close), so a forgotten
# `</parameter>` swallows nothing.
_VALUE_ENDS = (PARAMETER_END, PARAMETER, FUNCTION_END)
_FUNCTION_NAME = re.compile(r"^[^\s<>]+$")
_TWO_WORDS = re.compile(r"\S\s+\S")


class _At(Enum):
    TEXT = auto()  # outside calls: content
    BLOCK = auto()  # `<tool_call>` opened, no function yet (nothing committed)
    NAME = auto()  # `<function=` seen, its name not yet closed (nothing committed)
    ARGUMENTS = auto()  # inside a function, between parameters
    PARAMETER_NAME = auto()  # `<parameter=` seen
    VALUE = auto()  # inside a parameter's value
    AFTER_FUNCTION = auto()  # `</function>` seen inside a block
    THINKING = auto()  # inside a think block (Seed-OSS's): content, never calls


@dataclass
class Qwen3CoderStream:
    """One choice's text, read incrementally (`feed`), as content and call deltas."""

    # name -> the function's parameters schema (the request's tools)
    functions: dict[str, dict[str, Any]] = field(default_factory=dict)
    reads_tool_schemas = True
    # The block's tags, and a think block's (whose text is content, not calls), if any.
    block_open: ClassVar[str] = TOOL_CALL
    block_close: ClassVar[str] = TOOL_CALL_END
    think_tags: ClassVar[tuple[str, str] | None] = None

    calls: int = 0
    _around_calls: TextAroundCalls = field(default_factory=TextAroundCalls)
    _at: _At = _At.TEXT
    _buffer: str = ""  # text not yet consumed
    _in_block: bool = False  # the current function sits inside `<tool_call>`
    _opened: str = ""  # a block's opening text, kept in case no call follows
    _function: str = ""
    _keys: int = 0  # how many keys the current call's arguments have so far
    _kind: str = "string"  # the current value's declared type
    # The current value's raw text not yet sent (a text value's sent part is dropped, so
    # a long file streams in linear time), and how far it was searched for its end.
    _value: str = ""
    _scanned: int = 0
    _leading: bool = True  # the value's first newline (the layout's) may still come
    _quoted: bool = False  # the value's opening quote went out

    def feed(self, text: str, final: bool) -> tuple[dict[str, Any], bool]:
        """Delta fields for this text, and whether any tool call was made so far.

        Text this feed holds after one of its calls comes under AFTER_CALLS; a call's
        deltas within one feed are merged, so a whole answer gives one entry per call."""
        self._buffer += text
        out = _Feed()
        while self._step(out, final):
            pass
        return self._around_calls.fields(out.before, out.after, out.deltas, final), self.calls > 0

    def _step(self, out: _Feed, final: bool) -> bool:
        """Consume what the buffer decides; False once it must wait for more text."""
        return getattr(self, _HANDLERS[self._at])(out, final)

    def _text(self, out: _Feed, final: bool) -> bool:
        buffer = self._buffer
        markers = (self.block_open, FUNCTION, *(self.think_tags or ())[:1])
        found = [(i, m) for m in markers if (i := buffer.find(m)) >= 0]
        if not found:
            keep = 0 if final else max(marker_prefix_len(buffer, m) for m in markers)
            out.content(buffer[: len(buffer) - keep])
            self._buffer = buffer[len(buffer) - keep :]
            return False
        start, marker = min(found)
        out.content(buffer[:start])
        if self.think_tags is not None and marker == self.think_tags[0]:
            out.content(marker)
            self._buffer, self._at = buffer[start + len(marker) :], _At.THINKING
        elif marker == self.block_open:
            self._buffer = buffer[start + len(marker) :]
            self._opened, self._at = marker, _At.BLOCK
        else:
            self._buffer = buffer[start:]
            self._opened, self._in_block, self._at = "", False, _At.NAME
        return True

    def _thinking(self, out: _Feed, final: bool) -> bool:
        """A think block's text goes out as content (a reasoning parser, when configured,
        takes it first); a call it mentions is no call."""
        assert self.think_tags is not None
        close = self.think_tags[1]
        buffer = self._buffer
        end = buffer.find(close)
        if end < 0:
            keep = 0 if final else marker_prefix_len(buffer, close)
            out.content(buffer[: len(buffer) - keep])
            self._buffer = buffer[len(buffer) - keep :]
            return False
        out.content(buffer[: end + len(close)])
        self._buffer, self._at = buffer[end + len(close) :], _At.TEXT
        return True

    def _block(self, out: _Feed, final: bool) -> bool:
        buffer = self._buffer
        function, end = buffer.find(FUNCTION), buffer.find(self.block_close)
        if function >= 0 and (end < 0 or function < end):
            self._opened += buffer[:function]
            self._buffer = buffer[function:]
            self._in_block, self._at = True, _At.NAME
            return True
        if end < 0 and not final:
            return False
        body = buffer if end < 0 else buffer[:end]
        self._buffer = "" if end < 0 else buffer[end + len(self.block_close) :]
        call = call_from_json(body.strip())
        if call is None:  # not a call after all: the text goes out as it was written
            out.content(self._opened + body + ("" if end < 0 else self.block_close))
        else:
            out.deltas.append({"index": self.calls, **call})
            self.calls += 1
        self._opened, self._at = "", _At.TEXT
        return True

    def _name(self, out: _Feed, final: bool) -> bool:
        rest = self._buffer[len(FUNCTION) :]
        close = rest.find(">")
        name = rest[:close].strip() if close >= 0 else ""
        if close < 0 and not final and "<" not in rest and not _TWO_WORDS.search(rest):
            return False  # the name is still being written
        if not _FUNCTION_NAME.match(name):  # no call: the text goes out as written
            out.content(self._opened + FUNCTION)
            self._buffer, self._opened, self._at = rest, "", _At.TEXT
            return True
        self._opened, self._function, self._keys = "", name, 0
        out.deltas.append({"index": self.calls, **tool_call(name, "")})
        self.calls += 1
        self._buffer, self._at = rest[close + 1 :], _At.ARGUMENTS
        return True

    def _arguments(self, out: _Feed, final: bool) -> bool:
        buffer = self._buffer
        found = [
            (i, m)
            for m in (PARAMETER, FUNCTION_END, self.block_close)
            if (i := buffer.find(m)) >= 0
        ]
        if not found:
            if final:
                self._end_function(out)
                self._buffer, self._at = "", _At.TEXT
                return False
            # Text between parameters is layout: keep only what could begin a tag.
            keep = max(
                marker_prefix_len(buffer, m) for m in (PARAMETER, FUNCTION_END, self.block_close)
            )
            self._buffer = buffer[len(buffer) - keep :]
            return False
        start, marker = min(found)
        self._buffer = buffer[start + len(marker) :]
        if marker == PARAMETER:
            self._at = _At.PARAMETER_NAME
            return True
        self._end_function(out)
        if marker == FUNCTION_END:
            self._at = _At.AFTER_FUNCTION
        else:  # `</tool_call>` with no `</function>`: the model closed both at once
            self._in_block, self._at = False, _At.TEXT
        return True

    def _parameter_name(self, out: _Feed, final: bool) -> bool:
        close = self._buffer.find(">")
        if close < 0:
            if final:  # cut inside the name: the arguments end before it
                self._end_function(out)
                self._buffer, self._at = "", _At.TEXT
            return False
        name = self._buffer[:close].strip()
        self._buffer = self._buffer[close + 1 :]
        out.arguments(
            self.calls - 1,
            ("{" if self._keys == 0 else ", ") + json.dumps(name, ensure_ascii=False) + ": ",
        )
        self._keys += 1
        self._kind = declared_type(self.functions.get(self._function), name)
        self._value, self._scanned, self._leading, self._quoted = "", 0, True, False
        self._at = _At.VALUE
        return True

    def _value_text(self, out: _Feed, final: bool) -> bool:
        self._value += self._buffer
        self._buffer = ""
        ends = self._value_ends
        start = max(0, self._scanned - max(len(m) for m in ends))
        found = [(i, m) for m in ends if (i := self._value.find(m, start)) >= 0]
        self._scanned = len(self._value)
        if found:
            end, marker = min(found)
            rest = (
                self._value[end + len(marker) :] if marker == PARAMETER_END else self._value[end:]
            )
            self._end_value(out, self._value[:end])
            self._buffer, self._at = rest, _At.ARGUMENTS
            return True
        if final:
            self._end_value(out, self._value)
            self._end_function(out)
            self._at = _At.TEXT
            return False
        if is_text(self._kind):
            self._stream_text(out)
        return False

    def _stream_text(self, out: _Feed) -> None:
        """Send the part of a text value that no later text can change."""
        self._drop_leading_newline()
        value = self._value
        keep = max(marker_prefix_len(value, m) for m in self._value_ends)
        safe = value[: len(value) - keep]
        if safe.endswith("\n"):
            safe = safe[:-1]  # may be the layout's newline before the closing tag
        if not safe or (not self._quoted and "null".startswith(safe.lower())):
            return  # "null" (any case) would be null, not a string
        escaped = json.dumps(safe, ensure_ascii=False)[1:-1]
        out.arguments(self.calls - 1, ("" if self._quoted else '"') + escaped)
        self._quoted = True
        self._value = value[len(safe) :]
        self._scanned = len(self._value)  # what was sent held no end

    def _drop_leading_newline(self) -> None:
        if self._leading and self._value:
            self._value = self._value.removeprefix("\n")
            self._leading = False

    def _end_value(self, out: _Feed, raw: str) -> None:
        self._value = raw
        self._drop_leading_newline()
        value = self._value.removesuffix("\n")
        if self._quoted:
            text = json.dumps(value, ensure_ascii=False)[1:]
        else:
            text = json.dumps(typed_value(value, self._kind), ensure_ascii=False)
        out.arguments(self.calls - 1, text)

    @property
    def _value_ends(self) -> tuple[str, ...]:
        return (*_VALUE_ENDS, self.block_close)

    def _end_function(self, out: _Feed) -> None:
        out.arguments(self.calls - 1, "{}" if self._keys == 0 else "}")

    def _after_function(self, out: _Feed, final: bool) -> bool:
        buffer = self._buffer
        if not self._in_block:
            # A bare function: a `</tool_call>` right after it closes a block whose
            # opening the model left out; anything else is text again.
            stripped = buffer.lstrip()
            if stripped.startswith(self.block_close):
                self._buffer = stripped[len(self.block_close) :]
            elif not final and self.block_close.startswith(stripped):
                return False  # nothing yet, or what may become `</tool_call>`
            self._at = _At.TEXT
            return True
        function, end = buffer.find(FUNCTION), buffer.find(self.block_close)
        if function >= 0 and (end < 0 or function < end):
            self._buffer, self._at = buffer[function:], _At.NAME
            return True
        if end >= 0:
            self._buffer = buffer[end + len(self.block_close) :]
            self._in_block, self._at = False, _At.TEXT
            return True
        if final:
            self._buffer, self._at = "", _At.TEXT
            return False
        # Inside the block only another function or its end can follow.
        keep = max(marker_prefix_len(buffer, m) for m in (FUNCTION, self.block_close))
        self._buffer = buffer[len(buffer) - keep :]
        return False


_HANDLERS = {
    _At.TEXT: "_text",
    _At.BLOCK: "_block",
    _At.NAME: "_name",
    _At.ARGUMENTS: "_arguments",
    _At.PARAMETER_NAME: "_parameter_name",
    _At.VALUE: "_value_text",
    _At.AFTER_FUNCTION: "_after_function",
    _At.THINKING: "_thinking",
}


class SeedOssStream(Qwen3CoderStream):
    """The "seed_oss" parser: Seed-OSS writes the same calls inside `<seed:tool_call>`
    blocks, after thinking in `<seed:think>`, whose text is content here as in vLLM's
    parser (no call is read inside it)."""

    # Its tags may be special tokens, which detokenizing must keep for the parser.
    needs_special_tokens = True
    block_open: ClassVar[str] = "<seed:tool_call>"
    block_close: ClassVar[str] = "</seed:tool_call>"
    think_tags: ClassVar[tuple[str, str] | None] = ("<seed:think>", "</seed:think>")


@dataclass
class _Feed:
    """What one feed gives: text before its first call, text after one, call deltas."""

    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    deltas: list[dict[str, Any]] = field(default_factory=list)

    def content(self, text: str) -> None:
        if text:
            (self.after if self.deltas else self.before).append(text)

    def arguments(self, index: int, text: str) -> None:
        """Append to call `index`'s arguments (merged into its delta of this feed)."""
        if self.deltas and self.deltas[-1]["index"] == index:
            self.deltas[-1]["function"]["arguments"] += text
        else:
            self.deltas.append({"index": index, "function": {"arguments": text}})
