"""Structured-output constraints compiled into llguidance matchers, once per constraint.

Applications send the same schema with every request, so compiled matchers
are cached by constraint and each sequence gets a cheap copy with its own
parse state. The llguidance view of the vocabulary (~0.3 s to build) is made
on first use, sized to the model's logits, which may be wider than the
tokenizer: the padding ids are never allowed. Torch-free and thread-safe:
the worker's intake thread compiles ahead of the engine thread, and the API
uses `check` to refuse a bad schema with a 400 before queueing.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections import OrderedDict

import llguidance.hf
from llguidance import LLMatcher, LLTokenizer

from engine.structured_output import (
    StructuredOutput,
    StructuredOutputError,
    check_grammar,
    compile_error,
    has_think_tokens,
)
from engine.tokenizer import Tokenizer

DEFAULT_CACHE_SIZE = 256


class GrammarCompiler:
    def __init__(
        self,
        tokenizer: Tokenizer,
        vocab_size: int,
        eos_token_ids: frozenset[int] | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        *,
        compact_json: bool = False,
    ) -> None:
        """`compact_json`: the server's default for JSON constraints (vLLM's
        disable_any_whitespace), for those that did not ask for a whitespace pattern."""
        self.tokenizer = tokenizer
        self.compact_json = compact_json
        self.vocab_size = max(vocab_size, tokenizer.vocab_size)
        # Once a constraint is complete only these may follow (the engine's: config + tokenizer).
        self.eos_token_ids = eos_token_ids or tokenizer.eos_token_ids
        self.cache_size = cache_size
        self._ll_tokenizer: LLTokenizer | None = None
        self._compiled: OrderedDict[StructuredOutput, LLMatcher] = OrderedDict()
        self._checked: OrderedDict[StructuredOutput, None] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def ll_tokenizer(self) -> LLTokenizer:
        with self._lock:
            if self._ll_tokenizer is None:
                try:
                    self._ll_tokenizer = llguidance.hf.from_tokenizer(
                        self.tokenizer.hf_tokenizer,
                        n_vocab=self.vocab_size,
                        eos_token=sorted(self.eos_token_ids),
                    )
                except Exception as exc:  # e.g. a tokenizer llguidance cannot read
                    raise StructuredOutputError(
                        f"structured output is not available for this model's tokenizer: {exc}"
                    ) from None
            return self._ll_tokenizer

    @functools.cached_property
    def think_tokens(self) -> bool:
        """Whether a reasoning model's tags are tokens here (how a constraint after
        thinking names them: engine/structured_output.py)."""
        return has_think_tokens(self.ll_tokenizer)

    def served(self, constraint: StructuredOutput) -> StructuredOutput:
        """The constraint as this engine compiles it: compact JSON by the server's default
        unless the request gave its own whitespace pattern."""
        if (
            self.compact_json
            and constraint.kind == "json"
            and not constraint.compact_json
            and constraint.whitespace_pattern is None
        ):
            return dataclasses.replace(constraint, compact_json=True)
        return constraint

    def check(self, constraint: StructuredOutput) -> None:
        """Raise StructuredOutputError if the constraint cannot be compiled for this model.

        Validating is cheaper than compiling but still grows with the schema, and
        clients repeat theirs: constraints that passed are remembered (LRU).
        """
        constraint = self.served(constraint)
        with self._lock:
            if constraint in self._checked:
                self._checked.move_to_end(constraint)
                return
        check_grammar(constraint, self.ll_tokenizer, self.think_tokens)
        with self._lock:
            self._checked[constraint] = None
            while len(self._checked) > self.cache_size:
                self._checked.popitem(last=False)

    def prepare(self, constraint: StructuredOutput) -> None:
        """Compile into the cache now (off the engine thread); raises like `check`."""
        self._template(constraint)

    def matcher(self, constraint: StructuredOutput) -> LLMatcher:
        """A fresh matcher at the start of the constraint, for one sequence."""
        return self._template(constraint).deep_copy()

    def _template(self, constraint: StructuredOutput) -> LLMatcher:
        constraint = self.served(constraint)
        with self._lock:
            cached = self._compiled.get(constraint)
            if cached is not None:
                self._compiled.move_to_end(constraint)
                return cached
        # Compiling can take a while for a big schema and releases the GIL: not under the lock.
        compiled = LLMatcher(self.ll_tokenizer, constraint.grammar(self.think_tokens), log_level=0)
        if compiled.is_error():
            raise compile_error(constraint, compiled.get_error())
        with self._lock:
            self._compiled[constraint] = compiled
            while len(self._compiled) > self.cache_size:
                self._compiled.popitem(last=False)
        return compiled
