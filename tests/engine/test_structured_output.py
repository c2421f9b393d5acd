"""StructuredOutput: what each constraint accepts; clear errors for those that cannot work."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from engine.grammar_compiler import GrammarCompiler
from engine.structured_output import (
    DEFAULT_JSON_WHITESPACE,
    StructuredOutput,
    StructuredOutputError,
    check_grammar,
)
from engine.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def compiler(bundled_model_dir: Path) -> GrammarCompiler:
    tokenizer = Tokenizer.load(bundled_model_dir)
    return GrammarCompiler(tokenizer, tokenizer.vocab_size)


@pytest.fixture(scope="module")
def thinking_compiler(
    bundled_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> GrammarCompiler:
    """A tokenizer with `<think>` and `</think>` as added tokens, as Qwen3's and the
    R1 distills' have them (not marked special; llguidance treats them as such)."""
    import transformers

    hf = transformers.AutoTokenizer.from_pretrained(bundled_model_dir)
    hf.add_tokens([transformers.AddedToken(t, special=False, normalized=False) for t in THINK_TAGS])
    folder = tmp_path_factory.mktemp("thinking-tokenizer")
    hf.save_pretrained(folder)
    tokenizer = Tokenizer.load(folder)
    return GrammarCompiler(tokenizer, tokenizer.vocab_size)


THINK_TAGS = ("<think>", "</think>")


@pytest.fixture(scope="module")
def harmony_compiler(
    bundled_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> GrammarCompiler:
    """gpt-oss's: harmony's markers as special tokens."""
    from benchmarks.random_model import copy_tokenizer

    from ..harmony_tokenizer import with_harmony_tokens

    folder = copy_tokenizer(bundled_model_dir, tmp_path_factory.mktemp("harmony-tokenizer"))
    with_harmony_tokens(folder)
    tokenizer = Tokenizer.load(folder)
    return GrammarCompiler(tokenizer, tokenizer.vocab_size)


def accepts(compiler: GrammarCompiler, constraint: StructuredOutput, text: str) -> bool:
    """Whether `text`, tokenized as a model would emit it, is a complete match."""
    matcher = compiler.matcher(constraint)
    tokens = compiler.tokenizer.encode(text, add_special_tokens=False)
    return matcher.consume_tokens(tokens) and matcher.is_accepting()


def test_a_schema_keeps_its_property_order_and_compares_by_content() -> None:
    schema = {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "integer"}}}
    from_dict = StructuredOutput.json_schema(schema)
    assert list(json.loads(from_dict.spec)["properties"]) == ["b", "a"]
    assert StructuredOutput.json_schema(json.dumps(schema)) == from_dict
    assert hash(StructuredOutput.json_schema(dict(schema))) == hash(from_dict)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: StructuredOutput.json_schema("{not json"), "not valid JSON"),
        (lambda: StructuredOutput.json_schema([1, 2]), "must be an object"),
        (lambda: StructuredOutput.choice([]), "non-empty list"),
        (lambda: StructuredOutput.choice(["a", 3]), "non-empty strings"),
        (lambda: StructuredOutput.choice(["a", ""]), "non-empty strings"),
        (lambda: StructuredOutput("regex", "  "), "empty"),
        (lambda: StructuredOutput("xml", "<a/>"), "unknown structured output kind"),
        (lambda: StructuredOutput("regex", "a" * 300_000), "longer than"),
        (lambda: StructuredOutput.from_wire({"kind": "regex"}), "malformed: .*spec"),
        (lambda: StructuredOutput("choice", "yes"), "non-empty list"),
        (lambda: StructuredOutput("choice", '["a", 1]'), "non-empty strings"),
        (lambda: StructuredOutput.json_schema(False), "accepts nothing"),
        (lambda: StructuredOutput.from_wire("regex"), "must be an object"),
    ],
)
def test_malformed_constraints_are_refused_when_built(build, message: str) -> None:
    with pytest.raises(StructuredOutputError, match=message):
        build()


def test_the_schema_true_accepts_any_json_value(compiler: GrammarCompiler) -> None:
    anything = StructuredOutput.json_schema(True)
    assert accepts(compiler, anything, "[1, 2]")
    assert accepts(compiler, anything, '"text"')


def test_the_wire_form_round_trips() -> None:
    constraint = StructuredOutput.json_schema({"type": "array"}, whitespace_pattern=" ?")
    assert StructuredOutput.from_wire(dataclasses.asdict(constraint)) == constraint
    thinking = dataclasses.replace(constraint, after_thinking="if_opened")
    assert StructuredOutput.from_wire(dataclasses.asdict(thinking)) == thinking
    assert thinking != constraint  # compiled and cached apart
    with pytest.raises(StructuredOutputError, match="unknown after_thinking"):
        StructuredOutput("regex", "a", after_thinking="later")  # type: ignore[arg-type]


ANSWERS = {
    "json": ('{"type": "object", "required": ["a"]}', '{"a": 1}'),
    "regex": ("[0-9]+", "42"),
    "choice": ('["yes", "no"]', "no"),
    "grammar": ('root ::= "x" [a-c]', "xb"),
}


@pytest.mark.parametrize("kind", list(ANSWERS))
@pytest.mark.parametrize("tags", ["tokens", "text"])
def test_after_thinking_the_constraint_binds_the_answer_only(
    compiler: GrammarCompiler, thinking_compiler: GrammarCompiler, kind: str, tags: str
) -> None:
    """A reasoning model thinks freely (anything, even text the answer forbids) up to
    the first </think>; the answer after it, past blank lines, must match. Whether the
    tags are tokens of their own (real reasoning models) or spelled as text."""
    if tags == "tokens":
        compiler = thinking_compiler
        assert compiler.think_tokens
        ids = compiler.tokenizer.encode("<think>hm</think>", add_special_tokens=False)
        assert len(ids) == 3
    else:
        assert not compiler.think_tokens
    spec, answer = ANSWERS[kind]
    thought = 'Hmm, {"a": "no"}?\n<b>yes</b> 7'
    inside = StructuredOutput(kind, spec, after_thinking="inside")  # type: ignore[arg-type]
    assert accepts(compiler, inside, f"{thought}</think>\n\n{answer}")
    assert accepts(compiler, inside, f"<think>{thought}</think>{answer}")
    assert not accepts(compiler, inside, answer)  # inside the block: think first
    assert not accepts(compiler, inside, f"{thought}</think>{thought}")
    assert not accepts(compiler, inside, f"{thought}</think>{answer}</think>{answer}")
    opened = StructuredOutput(kind, spec, after_thinking="if_opened")  # type: ignore[arg-type]
    assert accepts(compiler, opened, f"<think>\n{thought}</think>\n\n{answer}")
    assert accepts(compiler, opened, answer)  # no block opened: the answer at once
    assert not accepts(compiler, opened, f"{thought}</think>{answer}")
    plain = StructuredOutput(kind, spec)  # type: ignore[arg-type]
    assert not accepts(compiler, plain, f"<think>{thought}</think>{answer}")


@pytest.mark.parametrize("kind", list(ANSWERS))
def test_in_harmony_the_constraint_binds_the_final_message(
    harmony_compiler: GrammarCompiler, kind: str
) -> None:
    """gpt-oss thinks freely on its analysis channel, if at all; the answer is the final
    channel's message, which must match (and nothing after it but the end)."""
    spec, answer = ANSWERS[kind]
    harmony = StructuredOutput(kind, spec, after_thinking="harmony")  # type: ignore[arg-type]
    thought = '<|channel|>analysis<|message|>Hmm, {"a": "no"}? 7<|end|><|start|>assistant'
    final = "<|channel|>final<|message|>"
    assert accepts(harmony_compiler, harmony, f"{thought}{final}{answer}")
    assert accepts(harmony_compiler, harmony, f"{final}{answer}")  # no thinking
    assert not accepts(harmony_compiler, harmony, answer)  # the answer needs its header
    assert not accepts(harmony_compiler, harmony, f"{thought}{final}{thought}")
    commentary = "<|channel|>commentary<|message|>"
    assert not accepts(harmony_compiler, harmony, f"{commentary}{answer}")


def test_an_answer_may_begin_like_the_opening_tag_when_the_tags_are_tokens(
    thinking_compiler: GrammarCompiler,
) -> None:
    """With the tags as tokens the answer's first text never competes with `<think>`:
    an answer starting "<t" and a regex that could swallow a think block both work."""
    tag = StructuredOutput("grammar", 'root ::= "<" [a-z]+ ">"', after_thinking="if_opened")
    assert accepts(thinking_compiler, tag, "<tag>")
    assert accepts(thinking_compiler, tag, "<think>\nhm</think>\n<tag>")
    greedy = StructuredOutput("regex", "[^0-9]*[0-9]+", after_thinking="if_opened")
    assert accepts(thinking_compiler, greedy, "<think>\nThe user wants 2+2</think>\nIt is 4")


@pytest.mark.parametrize(
    ("constraint", "message"),
    [
        (StructuredOutput("regex", "[0-9"), "(?s)invalid regex: .*unclosed character class"),
        (StructuredOutput("json", '{"type": "objekt"}'), "(?s)invalid JSON schema: .*objekt"),
        (StructuredOutput("grammar", "root ::= missing"), "(?s)invalid grammar: .*missing"),
        (StructuredOutput("grammar", "root ::= ("), "invalid grammar"),
        (
            StructuredOutput("json", '{"type": "object"}', whitespace_pattern="[ "),
            "invalid JSON schema",
        ),
    ],
)
def test_constraints_that_cannot_compile_say_why(
    compiler: GrammarCompiler, constraint: StructuredOutput, message: str
) -> None:
    with pytest.raises(StructuredOutputError, match=message):
        check_grammar(constraint, compiler.ll_tokenizer)
    with pytest.raises(StructuredOutputError, match=message):
        compiler.prepare(constraint)


def test_each_kind_accepts_what_it_describes_and_nothing_else(compiler: GrammarCompiler) -> None:
    schema = StructuredOutput.json_schema(
        {
            "type": "object",
            "properties": {"n": {"type": "integer"}, "s": {"enum": ["x", "y"]}},
            "required": ["n", "s"],
            "additionalProperties": False,
        }
    )
    assert accepts(compiler, schema, '{"n": 3, "s": "x"}')
    assert not accepts(compiler, schema, '{"n": 3, "s": "z"}')
    assert not accepts(compiler, schema, '{"n": 3}')
    assert not accepts(compiler, schema, '{"n": 3, "s": "x", "extra": 1}')
    any_object = StructuredOutput("json", '{"type": "object"}')
    assert accepts(compiler, any_object, '{"a": [1, {"b": null}]}')
    assert not accepts(compiler, any_object, "[1]")
    choice = StructuredOutput.choice(["red", "green"])
    assert accepts(compiler, choice, "green")
    assert not accepts(compiler, choice, "blue")
    gbnf = StructuredOutput("grammar", 'root ::= "(" [a-c]+ ")"')
    lark = StructuredOutput("grammar", 'start: "(" /[a-c]+/ ")"')
    for grammar in (gbnf, lark):
        assert accepts(compiler, grammar, "(abca)")
        assert not accepts(compiler, grammar, "(abd)")


def test_regex_classes_are_ascii_as_in_json_schema(compiler: GrammarCompiler) -> None:
    """`\\d` and `\\w` mean [0-9] and [A-Za-z0-9_]: a model must not answer in other scripts."""
    digits = StructuredOutput("regex", r"\d{3}")
    assert accepts(compiler, digits, "123")
    assert not accepts(compiler, digits, "١٢٣")  # Arabic-Indic digits: Unicode \d
    word = StructuredOutput("regex", r"\w+")
    assert accepts(compiler, word, "abc_9")
    assert not accepts(compiler, word, "ébc")


def test_json_whitespace_is_bounded_unless_asked_otherwise(compiler: GrammarCompiler) -> None:
    """Unbounded whitespace lets a model emit newlines until max_tokens; the default caps it."""
    assert DEFAULT_JSON_WHITESPACE.endswith("{0,64}")
    default = StructuredOutput("json", '{"type": "object"}')
    assert accepts(compiler, default, "{" + " " * 64 + "}")
    assert not accepts(compiler, default, "{" + " " * 65 + "}")
    assert accepts(compiler, default, '{\n  "a": 1\n}')
    compact = StructuredOutput("json", '{"type": "object"}', compact_json=True)
    assert accepts(compiler, compact, '{"a":1}')
    assert not accepts(compiler, compact, '{"a": 1}')
    custom = StructuredOutput("json", '{"type": "object"}', whitespace_pattern=" ?")
    assert accepts(compiler, custom, '{"a": 1}')
    assert not accepts(compiler, custom, '{"a":  1}')


def test_an_object_allows_only_the_properties_it_lists_unless_it_says_otherwise(
    compiler: GrammarCompiler,
) -> None:
    """As `vllm serve` generates (and OpenAI's strict mode requires): no unlisted keys."""
    listed = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    constraint = StructuredOutput.json_schema(listed)
    assert accepts(compiler, constraint, '{"a": "x"}')
    assert not accepts(compiler, constraint, '{"a": "x", "b": 1}')
    open_ = StructuredOutput.json_schema({**listed, "additionalProperties": True})
    assert accepts(compiler, open_, '{"a": "x", "b": 1}')
