"""Reading tool calls out of a model's own text, for `tool_choice: "auto"`.

With "auto" the model decides whether to call a tool and writes the call in
its trained syntax, so each model family needs a parser (vLLM's
`--tool-call-parser`):

- "hermes" (`api/hermes_tool_parser.py`): `<tool_call>` JSON blocks, anywhere in
  the text (Hermes 2/3, Qwen 2.5/3 and models trained like them);
- "llama3_json" (`api/llama3_tool_parser.py`): the whole answer as JSON calls
  (Llama 3.1-3.3);
- "pythonic" (`api/pythonic_tool_parser.py`): the whole answer as a Python list of
  calls (Llama 3.2, Llama 4, ToolACE);
- "mistral" (`api/mistral_tool_parser.py`): calls after the `[TOOL_CALLS]` token
  (Mistral 7B v0.3's JSON list, and v11+'s `name[ARGS]{...}`);
- "openai" (`api/openai_tool_parser.py`): gpt-oss's harmony messages to
  `functions.NAME`.

Each is a stream (`feed(text, final) -> (delta fields, called)`); the whole
answer is the same stream fed once, so both read a text the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from api.hermes_tool_parser import HermesStream
from api.llama3_tool_parser import Llama3JsonStream
from api.mistral_tool_parser import MistralStream
from api.openai_tool_parser import OpenAIToolStream
from api.pythonic_tool_parser import PythonicStream
from api.tool_call_json import AFTER_CALLS, ParsedOutput


class ToolParserStream(Protocol):
    def feed(self, text: str, final: bool) -> tuple[dict[str, Any], bool]: ...


TOOL_CALL_PARSERS: dict[str, Callable[[], ToolParserStream]] = {
    "hermes": HermesStream,
    "llama3_json": Llama3JsonStream,
    "pythonic": PythonicStream,
    "mistral": MistralStream,
    "openai": OpenAIToolStream,
}


def short_call_ids(name: str | None) -> bool:
    """Whether the model's chat template wants Mistral's 9-character call ids."""
    return name == "mistral"


def keeps_special_tokens(name: str | None) -> bool:
    """Whether the parser reads a special token (so detokenizing must not skip them)."""
    return name is not None and bool(
        getattr(TOOL_CALL_PARSERS[name], "needs_special_tokens", False)
    )


def new_tool_parser(name: str) -> ToolParserStream:
    return TOOL_CALL_PARSERS[name]()


def parse_tool_calls(name: str, text: str) -> ParsedOutput:
    """The whole output at once, exactly as the stream would split it."""
    fields, called = new_tool_parser(name).feed(text, final=True)
    if not called:
        return ParsedOutput(text, [])
    calls = [{k: v for k, v in d.items() if k != "index"} for d in fields["tool_calls"]]
    # As the stream sends it (and vLLM's parsers give it): the text as written, but
    # whitespace alone around calls is no content.
    content = fields.get("content", "") + fields.get(AFTER_CALLS, "")
    return ParsedOutput(content if content.strip() else None, calls)
