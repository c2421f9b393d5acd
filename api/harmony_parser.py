"""OpenAI's harmony format (gpt-oss): an output as messages on channels, read as it streams.

After a prompt ending `<|start|>assistant`, gpt-oss writes one or more
messages, each a header, `<|message|>`, a body, and an end token:

    <|channel|>analysis<|message|>The user asks ...<|end|>
    <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json
        <|message|>{"city": "Paris"}<|call|>
    <|start|>assistant<|channel|>final<|message|>It is sunny in Paris.<|return|>

(the second message on one line).

`analysis` is the model's thinking, `final` its answer, `commentary` either a
preamble for the user or, with a recipient (`to=functions.NAME`, which may
also stand before the channel), a tool call whose body is its arguments. The
markers are special tokens, so requests read this way keep special tokens
when detokenizing (the engine leaves an end-of-sequence token's text out, so
the caller restores `<|call|>` or `<|return|>` where one ended the output).
Streamed, a suffix that could begin a marker is held back, so no fragment of
one reaches a body; an output that does not start with a marker (a model
answering plainly) is read as one final message, which the next header (a
call after it) ends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from api.tool_call_json import marker_prefix_len

START = "<|start|>"
MESSAGE = "<|message|>"
CHANNEL = "<|channel|>"
# What ends a message: more to come, the whole answer done, or a tool call to run.
END = "<|end|>"
RETURN = "<|return|>"
CALL = "<|call|>"
BODY_ENDS = (END, RETURN, CALL)
# What begins the next message's header: it ends a body the model left open (a plain
# answer's, before a call the reasoning split passes on as harmony).
BODY_BREAKS = (START, CHANNEL)
MARKER_OPEN = "<|"
_CHANNEL_NAME = re.compile(r"<\|channel\|>\s*([^\s<]+)")
_RECIPIENT = re.compile(r"\bto=([^\s<]+)")
FUNCTIONS = "functions."


@dataclass(frozen=True)
class HarmonyPiece:
    """Some of one message's body, with what its header said. A message's first piece
    may be empty (its header just completed); `ended` marks its last, and `end` is the
    marker that ended it ("" where the output stopped inside the message, or the next
    header began inside it: `interrupted`)."""

    channel: str
    recipient: str | None
    text: str
    first: bool = False
    ended: bool = False
    end: str = ""
    # Ended by the next message's header, the model having left it open.
    interrupted: bool = False

    @property
    def function(self) -> str | None:
        """The function a tool call names (`to=functions.NAME`), else None."""
        if self.recipient is None or not self.recipient.startswith(FUNCTIONS):
            return None
        return self.recipient.removeprefix(FUNCTIONS)


@dataclass
class HarmonyParser:
    """Feed an output's text (special tokens kept) piece by piece; get body pieces."""

    pending: str = ""
    channel: str | None = None  # the open message's (None: between messages)
    recipient: str | None = None

    def feed(self, text: str, final: bool) -> list[HarmonyPiece]:
        buffer, self.pending = self.pending + text, ""
        pieces: list[HarmonyPiece] = []
        while buffer:
            if self.channel is None:
                buffer = self._header(buffer, final, pieces)
            else:
                buffer = self._body(buffer, final, pieces)
        if final and self.channel is not None:  # cut short (max_tokens): the body so far
            pieces.append(HarmonyPiece(self.channel, self.recipient, "", ended=True))
            self.channel = None
        return pieces

    def _header(self, buffer: str, final: bool, pieces: list[HarmonyPiece]) -> str:
        stripped = buffer.lstrip()  # whitespace between messages is nobody's
        if not stripped:
            self.pending = "" if final else buffer
            return ""
        if not stripped.startswith(MARKER_OPEN):
            if not final and MARKER_OPEN.startswith(stripped):
                self.pending = buffer
                return ""
            # No header: a plain answer, read as one final message.
            self._open("final", None, pieces)
            return stripped
        cut = stripped.find(MESSAGE)
        if cut < 0:
            if not final:  # a header is short: hold it whole
                self.pending = buffer
            elif not any(marker in stripped for marker in BODY_BREAKS):
                # Never a header (no harmony marker in it): plain text after all.
                self._open("final", None, pieces)
                return buffer
            return ""  # a header the output stopped inside: nothing of it is a body
        header = stripped[:cut]
        channel = _CHANNEL_NAME.search(header)
        recipient = _RECIPIENT.search(header)
        self._open(
            channel.group(1) if channel else "final",
            recipient.group(1) if recipient else None,
            pieces,
        )
        return stripped[cut + len(MESSAGE) :]

    def _open(self, channel: str, recipient: str | None, pieces: list[HarmonyPiece]) -> None:
        self.channel, self.recipient = channel, recipient
        pieces.append(HarmonyPiece(channel, recipient, "", first=True))

    def _body(self, buffer: str, final: bool, pieces: list[HarmonyPiece]) -> str:
        assert self.channel is not None
        markers = (*BODY_ENDS, *BODY_BREAKS)
        ends = [(buffer.find(marker), marker) for marker in markers]
        found = [(at, marker) for at, marker in ends if at >= 0]
        if not found:
            keep = 0 if final else max(marker_prefix_len(buffer, m) for m in markers)
            self.pending = buffer[len(buffer) - keep :]
            text = buffer[: len(buffer) - keep]
            if text:
                pieces.append(HarmonyPiece(self.channel, self.recipient, text))
            return ""
        at, marker = min(found)
        body = buffer[:at]
        if marker in BODY_BREAKS:  # left open: the next header starts here
            piece = HarmonyPiece(self.channel, self.recipient, body, ended=True, interrupted=True)
            pieces.append(piece)
            self.channel = self.recipient = None
            return buffer[at:]
        pieces.append(HarmonyPiece(self.channel, self.recipient, body, ended=True, end=marker))
        self.channel = self.recipient = None
        return buffer[at + len(marker) :]


def harmony_reasoning_tokens(pieces: list[str]) -> int:
    """How many of an output's tokens (each token's text, special tokens kept) precede
    its first message off the analysis channel: usage's reasoning_tokens."""
    parser = HarmonyParser()
    message_start = 0
    for index, piece in enumerate(pieces):
        if piece == START:  # always a message's first token (it ends one left open)
            message_start = index
        for read in parser.feed(piece, final=False):
            if read.first and read.channel != "analysis":
                return message_start
    return len(pieces)
