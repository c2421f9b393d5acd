"""The "openai" tool-call parser: gpt-oss's calls, harmony messages to `functions.NAME`.

A call is a message whose header names its recipient (`<|channel|>commentary
to=functions.get_weather <|constrain|>json<|message|>{...}<|call|>`, see
api/harmony_parser.py); its body is the arguments. Text on the final and
commentary channels is content; the analysis channel is not (the
"openai_gptoss" reasoning parser, which gpt-oss models get, takes it out
first). Each call goes out whole once its message ends; one the output
stopped inside (max_tokens) is no call, and its text goes out as content.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from api.harmony_parser import HarmonyParser
from api.tool_call_json import TextAroundCalls
from api.tool_choice import tool_call


@dataclass
class OpenAIToolStream:
    # The harmony markers are special tokens: detokenizing must keep them.
    needs_special_tokens = True

    parser: HarmonyParser = field(default_factory=HarmonyParser)
    calls: int = 0
    _around_calls: TextAroundCalls = field(default_factory=TextAroundCalls)
    _arguments: str = ""  # the open call's body so far

    def feed(self, text: str, final: bool) -> tuple[dict[str, Any], bool]:
        """Delta fields for this text, and whether any tool call was made so far. Content
        after one of this feed's calls comes under AFTER_CALLS, in the model's order."""
        before: list[str] = []
        after: list[str] = []
        deltas: list[dict[str, Any]] = []
        for piece in self.parser.feed(text, final):
            content = after if deltas else before
            name = piece.function
            if name is None:
                if piece.channel != "analysis":
                    content.append(piece.text)
                continue
            self._arguments += piece.text
            if not piece.ended:
                continue
            arguments, self._arguments = self._arguments.strip(), ""
            if piece.interrupted:  # left open for another message: not a call, nor content
                continue
            if not piece.end:  # the output stopped inside the call: not a call
                content.append(arguments)
                continue
            deltas.append({"index": self.calls, **tool_call(name, arguments or "{}")})
            self.calls += 1
        return self._around_calls.fields(before, after, deltas, final), self.calls > 0
