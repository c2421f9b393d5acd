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
  `functions.NAME`;
- "qwen3_coder" (`api/qwen3_coder_tool_parser.py`; vLLM's "qwen3_xml" names the
  same format): `<function=NAME><parameter=KEY>` calls (Qwen3-Coder), whose bare
  text arguments are typed by the request's tool schemas;
- "seed_oss" (the same file): the same calls in `<seed:tool_call>` blocks after a
  `<seed:think>` block whose text stays content (Seed-OSS);
- "granite" (`api/granite_tool_parser.py`): the answer as a JSON list of calls
  after `<|tool_call|>` or `<tool_call>` (IBM Granite 3);
- "phi4_mini_json" (`api/phi4_mini_tool_parser.py`): `functools[...]` (Phi-4-mini);
- "olmo3" (`api/olmo3_tool_parser.py`): Python calls in `<function_calls>` (OLMo 3).

"llama4_json" and "llama4_pythonic" are vLLM's names for Llama 4's use of the
llama3_json and pythonic formats.

Each is a stream (`feed(text, final) -> (delta fields, called)`); the whole
answer is the same stream fed once, so both read a text the same way. A parser
that types arguments by the tools (`reads_tool_schemas`) is built with them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from api.granite_tool_parser import GraniteStream
from api.hermes_tool_parser import HermesStream
from api.llama3_tool_parser import Llama3JsonStream
from api.mistral_tool_parser import MistralStream
from api.olmo3_tool_parser import Olmo3Stream
from api.openai_tool_parser import OpenAIToolStream
from api.phi4_mini_tool_parser import Phi4MiniJsonStream
from api.pythonic_tool_parser import PythonicStream
from api.qwen3_coder_tool_parser import Qwen3CoderStream, SeedOssStream
from api.tool_call_json import AFTER_CALLS, ParsedOutput
from api.tool_choice import function_parameters


class ToolParserStream(Protocol):
    def feed(self, text: str, final: bool) -> tuple[dict[str, Any], bool]: ...


TOOL_CALL_PARSERS: dict[str, Callable[..., ToolParserStream]] = {
    "hermes": HermesStream,
    "llama3_json": Llama3JsonStream,
    "pythonic": PythonicStream,
    "mistral": MistralStream,
    "openai": OpenAIToolStream,
    "qwen3_coder": Qwen3CoderStream,
    "qwen3_xml": Qwen3CoderStream,
    "seed_oss": SeedOssStream,
    "granite": GraniteStream,
    "phi4_mini_json": Phi4MiniJsonStream,
    "olmo3": Olmo3Stream,
    "llama4_json": Llama3JsonStream,
    "llama4_pythonic": PythonicStream,
}


def short_call_ids(name: str | None) -> bool:
    """Whether the model's chat template wants Mistral's 9-character call ids."""
    return name == "mistral"


def keeps_special_tokens(name: str | None) -> bool:
    """Whether the parser reads a special token (so detokenizing must not skip them)."""
    return name is not None and bool(
        getattr(TOOL_CALL_PARSERS[name], "needs_special_tokens", False)
    )


def new_tool_parser(name: str, tools: list[dict[str, Any]] | None = None) -> ToolParserStream:
    """A parser for one choice's answer to a request offering `tools`."""
    parser = TOOL_CALL_PARSERS[name]
    if getattr(parser, "reads_tool_schemas", False):
        return parser(function_parameters(tools))
    return parser()


def parse_tool_calls(
    name: str, text: str, tools: list[dict[str, Any]] | None = None
) -> ParsedOutput:
    """The whole output at once, exactly as the stream would split it."""
    fields, called = new_tool_parser(name, tools).feed(text, final=True)
    if not called:
        return ParsedOutput(text, [])
    calls = [{k: v for k, v in d.items() if k != "index"} for d in fields["tool_calls"]]
    # As the stream sends it (TextAroundCalls): the text as written, but whitespace
    # alone before the first call or after it is no content.
    content = fields.get("content", "") + fields.get(AFTER_CALLS, "")
    return ParsedOutput(content or None, calls)
