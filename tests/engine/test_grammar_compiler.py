"""GrammarCompiler: compiled once per constraint, a private parse state per sequence."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from engine import grammar_mask
from engine.grammar_compiler import GrammarCompiler
from engine.grammar_mask import allowed_tokens, fill_bitmask
from engine.structured_output import StructuredOutput, StructuredOutputError
from engine.tokenizer import Tokenizer

YES_NO = StructuredOutput.choice(["yes", "no"])


@pytest.fixture(scope="module")
def tokenizer(bundled_model_dir: Path) -> Tokenizer:
    return Tokenizer.load(bundled_model_dir)


def allowed(compiler: GrammarCompiler, matcher) -> set[int]:
    bitmask = fill_bitmask([matcher], compiler.vocab_size, torch.device("cpu"))
    return set(allowed_tokens(bitmask, compiler.vocab_size)[0].nonzero().flatten().tolist())


def test_each_constraint_compiles_once_and_sequences_parse_independently(
    tokenizer: Tokenizer,
) -> None:
    compiler = GrammarCompiler(tokenizer, tokenizer.vocab_size)
    first, second = (
        compiler.matcher(YES_NO),
        compiler.matcher(StructuredOutput.choice(["yes", "no"])),
    )
    assert len(compiler._compiled) == 1
    assert first.consume_tokens(tokenizer.encode("yes", add_special_tokens=False))
    assert first.is_accepting() and not second.is_accepting()
    assert second.consume_tokens(tokenizer.encode("no", add_special_tokens=False))


def test_the_cache_keeps_the_most_recently_used(tokenizer: Tokenizer) -> None:
    compiler = GrammarCompiler(tokenizer, tokenizer.vocab_size, cache_size=2)
    a, b, c = (StructuredOutput("regex", r) for r in ("a+", "b+", "c+"))
    compiler.prepare(a)
    compiler.prepare(b)
    compiler.prepare(a)
    compiler.prepare(c)
    assert list(compiler._compiled) == [a, c]


def test_a_failed_compile_caches_nothing(tokenizer: Tokenizer) -> None:
    compiler = GrammarCompiler(tokenizer, tokenizer.vocab_size)
    with pytest.raises(StructuredOutputError):
        compiler.matcher(StructuredOutput("grammar", "root ::= nothing_here"))
    assert not compiler._compiled


def test_a_complete_match_allows_only_the_engines_eos_and_never_padding_ids(
    tokenizer: Tokenizer,
) -> None:
    """The model's logits may be wider than the tokenizer; EOS ids come from the engine."""
    padded = tokenizer.vocab_size + 64
    eos = frozenset({2, 0})
    compiler = GrammarCompiler(tokenizer, padded, eos_token_ids=eos)
    matcher = compiler.matcher(StructuredOutput("regex", "(ab)+"))
    start = allowed(compiler, matcher)
    assert start and max(start) < tokenizer.vocab_size
    assert not start & eos
    assert matcher.consume_tokens(tokenizer.encode("ab", add_special_tokens=False))
    more = allowed(compiler, matcher)
    assert eos <= more  # complete, and may go on: "abab"
    regex_done = compiler.matcher(StructuredOutput.choice(["ok"]))
    assert regex_done.consume_tokens(tokenizer.encode("ok", add_special_tokens=False))
    assert allowed(compiler, regex_done) == set(eos)


def test_threads_compiling_at_once_share_one_vocabulary(tokenizer: Tokenizer) -> None:
    compiler = GrammarCompiler(tokenizer, tokenizer.vocab_size)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(5):
                compiler.prepare(StructuredOutput("regex", f"x{i}y{j}+"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(compiler._compiled) == 20


def test_masks_filled_in_parallel_equal_masks_filled_one_by_one(
    tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(grammar_mask, "PARALLEL", True)  # whatever this machine's cores
    compiler = GrammarCompiler(tokenizer, tokenizer.vocab_size)
    constraints = [
        StructuredOutput("regex", r"[a-z]{2,5}"),
        StructuredOutput.choice(["alpha", "beta"]),
        StructuredOutput("json", '{"type": "object"}'),
    ]
    matchers = [compiler.matcher(constraints[i % 3]) for i in range(12)]
    for i, matcher in enumerate(matchers):  # different parse states
        matcher.consume_tokens(
            tokenizer.encode(["ab", "al", "{"][i % 3], add_special_tokens=False)[: i % 2 + 1]
        )
    parallel = fill_bitmask(matchers, compiler.vocab_size, torch.device("cpu"))
    assert len(matchers) >= grammar_mask.PARALLEL_ROWS
    one_by_one = torch.cat(
        [fill_bitmask([m], compiler.vocab_size, torch.device("cpu")) for m in matchers]
    )
    assert torch.equal(parallel, one_by_one)


def test_the_servers_compact_json_leaves_no_whitespace_unless_a_request_sets_its_own(
    tokenizer: Tokenizer,
) -> None:
    """--structured-outputs-config's disable_any_whitespace: JSON constraints allow no
    whitespace between tokens; a request's own whitespace pattern (or a regex) is kept."""
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    (newline,) = tokenizer.encode("\n", add_special_tokens=False)
    (brace,) = tokenizer.encode("{", add_special_tokens=False)

    def newline_after_brace(compiler: GrammarCompiler, constraint: StructuredOutput) -> bool:
        matcher = compiler.matcher(constraint)
        assert matcher.consume_tokens([brace])
        return newline in allowed(compiler, matcher)

    flexible = GrammarCompiler(tokenizer, tokenizer.vocab_size)
    compact = GrammarCompiler(tokenizer, tokenizer.vocab_size, compact_json=True)
    plain = StructuredOutput.json_schema(schema)
    assert newline_after_brace(flexible, plain)
    assert not newline_after_brace(compact, plain)
    own = StructuredOutput.json_schema(schema, whitespace_pattern=r"[\n ]?")
    assert newline_after_brace(compact, own)
    assert compact.served(YES_NO) is YES_NO  # not JSON: as it was
