"""What a request's output must match: a JSON schema, any JSON object, a regex, a choice, a grammar.

OpenAI's `response_format` and vLLM's `guided_*` / `structured_outputs` fields
all become one `StructuredOutput`, which travels inside SamplingParams (so the
API, the wire and the offline `LLM` share it) and turns into an llguidance
grammar. Torch-free: the API validates grammars with it before queueing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, get_args

from llguidance import LLMatcher, LLTokenizer, regex_to_lark
from llguidance.gbnf_to_lark import any_to_lark

from engine.closed_json_objects import close_objects

StructuredOutputKind = Literal["json", "regex", "choice", "grammar"]
KINDS: tuple[str, ...] = get_args(StructuredOutputKind)
# Where a reasoning model's output starts (api/reasoning_parser.py's ThinkStart):
# inside a think block, free to open one, or with harmony messages (gpt-oss). The
# constraint applies after the thinking.
AfterThinking = Literal["inside", "if_opened", "harmony"]
AFTER_THINKING: tuple[str, ...] = get_args(AfterThinking)
_BLANK = r"/[ \t\r\n]*/"
# Models that think (Qwen3, DeepSeek-R1's distills, QwQ) have `<think>` and `</think>`
# as tokens of their own, which llguidance treats as special: the grammar names them
# (`<think>`), so the thinking is any text and the answer's first text never competes
# with the opening tag.
_THINKING_TOKENS = {
    "inside": f"start: <think>? THOUGHT </think> {_BLANK} @answer\nTHOUGHT: /(.|\\n)*/\n",
    "if_opened": f"start: (<think> THOUGHT </think>)? {_BLANK} @answer\nTHOUGHT: /(.|\\n)*/\n",
}
# A tokenizer without them spells the tags as text. The thinking is then one lexeme
# of any text up to and including the first </think>, so the greedy lexer ends it
# exactly there (llguidance's regexes have no lookaround).
_THOUGHT_TEXT = r"/(.|\n)*<\/think>/ & ~/(.|\n)*<\/think>(.|\n)+/"
_THINKING_TEXT = {
    "inside": f"start: THOUGHT {_BLANK} @answer\nTHOUGHT: {_THOUGHT_TEXT}\n",
    "if_opened": (
        f'start: ({_BLANK} "<think>" THOUGHT)? {_BLANK} @answer\nTHOUGHT: {_THOUGHT_TEXT}\n'
    ),
}
# Compiles only for a tokenizer with both tags as tokens of their own.
THINK_TOKENS_PROBE = "start: <think> </think>"
# gpt-oss (api/harmony_parser.py): an analysis message, if any, then the answer as the
# final channel's message. The markers are special tokens, which the thinking's text
# cannot spell, so it ends exactly at <|end|>.
_HARMONY = (
    'start: (<|channel|> "analysis" <|message|> THOUGHT <|end|> <|start|> "assistant")? '
    '<|channel|> "final" <|message|> @answer\nTHOUGHT: /(.|\\n)*/\n'
)
# "Any JSON object": OpenAI's json_object mode.
ANY_JSON_OBJECT = '{"type": "object"}'
MAX_SPEC_CHARS = 256_000
# Whitespace JSON may have between two tokens. Bounded: with JSON's unbounded
# whitespace a model can emit newlines until max_tokens (a known failure of
# unconstrained-whitespace JSON modes); 64 still fits deep pretty-printing.
DEFAULT_JSON_WHITESPACE = r"[\x20\x0A\x0D\x09]{0,64}"


class StructuredOutputError(ValueError):
    """The constraint cannot be compiled; the message says why, for the client's 400."""


@dataclass(frozen=True)
class StructuredOutput:
    """One constraint on the generated text.

    `spec` is text in every case, so the dataclass is hashable (compiled
    grammars are cached by it) and crosses JSON unchanged: a JSON schema as
    JSON text, a regex, a JSON list of strings for `choice`, or a Lark / GBNF
    grammar. `whitespace_pattern` is the regex for whitespace JSON allows
    between tokens (vLLM's guided_whitespace_pattern; default
    DEFAULT_JSON_WHITESPACE); `compact_json` allows none at all (vLLM's
    disable_any_whitespace). `after_thinking` (a reasoning model's) lets the
    output think freely up to `</think>` and constrains only the answer after
    it, as vLLM does: "inside" when the output starts inside a think block,
    "if_opened" when it may open one with `<think>` or answer at once,
    "harmony" when it is gpt-oss's messages (thinking on the analysis channel,
    the answer on the final one).
    """

    kind: StructuredOutputKind
    spec: str
    whitespace_pattern: str | None = None
    compact_json: bool = False
    after_thinking: AfterThinking | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise StructuredOutputError(f"unknown structured output kind {self.kind!r}")
        if not isinstance(self.spec, str) or not self.spec.strip():
            raise StructuredOutputError(f"the {self.kind} constraint is empty")
        if len(self.spec) > MAX_SPEC_CHARS:
            raise StructuredOutputError(
                f"the {self.kind} constraint is longer than {MAX_SPEC_CHARS} characters"
            )
        if self.after_thinking is not None and self.after_thinking not in AFTER_THINKING:
            raise StructuredOutputError(f"unknown after_thinking {self.after_thinking!r}")
        if self.kind == "choice":
            try:
                options = json.loads(self.spec)
            except json.JSONDecodeError:
                options = None
            _check_choice(options)

    @classmethod
    def json_schema(cls, schema: Any, **options: Any) -> StructuredOutput:
        """From a schema given as an object or as JSON text; objects that list their
        properties allow no others unless they say so (engine/closed_json_objects.py)."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as exc:
                raise StructuredOutputError(f"the JSON schema is not valid JSON: {exc}") from None
        if schema is True:
            schema = {}  # the schema that accepts any JSON value
        if schema is False:
            raise StructuredOutputError("the JSON schema `false` accepts nothing")
        if not isinstance(schema, dict):
            raise StructuredOutputError("a JSON schema must be an object")
        # Key order kept: properties are generated in the order the schema lists them.
        return cls("json", json.dumps(close_objects(schema)), **options)

    @classmethod
    def choice(cls, options: Any) -> StructuredOutput:
        _check_choice(options)
        return cls("choice", json.dumps(options))

    @classmethod
    def from_wire(cls, data: Any) -> StructuredOutput:
        if not isinstance(data, dict):
            raise StructuredOutputError("structured_output must be an object")
        try:
            return cls(**data)
        except TypeError as exc:
            raise StructuredOutputError(f"malformed: {exc}") from None

    def grammar(self, think_tokens: bool = False) -> str:
        """The llguidance grammar (its JSON form) this constraint compiles to;
        `think_tokens`: the tokenizer has `<think>` and `</think>` as tokens."""
        try:
            return self._grammar(think_tokens)
        except StructuredOutputError:
            raise
        except Exception as exc:  # llguidance's converters raise assorted exception types
            raise compile_error(self, str(exc)) from None

    def _grammar(self, think_tokens: bool) -> str:
        answer = self._answer_grammar()
        if self.after_thinking is None:
            return answer
        wrappers = _THINKING_TOKENS if think_tokens else _THINKING_TEXT
        wrappers = {**wrappers, "harmony": _HARMONY}
        # llguidance's converters give Lark text, or JSON naming one grammar.
        (body,) = (
            json.loads(answer)["grammars"]
            if answer.lstrip().startswith("{")
            else [{"lark_grammar": answer}]
        )
        thinking_first = {"lark_grammar": wrappers[self.after_thinking]}
        return json.dumps({"grammars": [thinking_first, {**body, "name": "answer"}]})

    def _answer_grammar(self) -> str:
        if self.kind == "json":
            options: dict[str, Any] = {"whitespace_flexible": not self.compact_json}
            if not self.compact_json:
                options["whitespace_pattern"] = self.whitespace_pattern or DEFAULT_JSON_WHITESPACE
            return LLMatcher.grammar_from_json_schema(self.spec, overrides=options)
        if self.kind == "regex":
            # JavaScript's classes, as in JSON schema patterns: \d and \w are ASCII
            # (the Rust regex default would let `\d` emit any Unicode digit).
            return LLMatcher.grammar_from_lark(f"start: /{regex_to_lark(self.spec, 'dw')}/")
        if self.kind == "choice":
            options_list = json.loads(self.spec)
            return LLMatcher.grammar_from_lark(
                "start: " + " | ".join(json.dumps(o) for o in options_list)
            )
        # vLLM's guided_grammar takes GBNF (llama.cpp's) or Lark; GBNF is converted.
        return LLMatcher.grammar_from_lark(any_to_lark(self.spec))


def has_think_tokens(tokenizer: LLTokenizer) -> bool:
    """Whether `<think>` and `</think>` are tokens of this tokenizer's own."""
    is_error, _ = LLMatcher.validate_grammar_with_warnings(THINK_TOKENS_PROBE, tokenizer)
    return not is_error


def check_grammar(
    constraint: StructuredOutput, tokenizer: LLTokenizer | None, think_tokens: bool = False
) -> None:
    """Raise StructuredOutputError naming the problem if the constraint cannot be compiled."""
    grammar = constraint.grammar(think_tokens)
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
    if is_error:
        raise compile_error(constraint, messages[0])


def _check_choice(options: Any) -> None:
    if not isinstance(options, list) or not options:
        raise StructuredOutputError("choice must be a non-empty list of strings")
    if not all(isinstance(o, str) and o for o in options):
        raise StructuredOutputError("choice must be a non-empty list of non-empty strings")


def compile_error(constraint: StructuredOutput, message: str) -> StructuredOutputError:
    return StructuredOutputError(f"invalid {_NOUNS[constraint.kind]}: {message}")


_NOUNS = {"json": "JSON schema", "regex": "regex", "choice": "choice", "grammar": "grammar"}
