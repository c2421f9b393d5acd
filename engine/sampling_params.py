"""Per-request sampling parameters, validated once at the edge.

Validation lives here (not in the API) so the offline `LLM`, the worker and
the HTTP front end all reject the same things with the same message; the API
turns the `ValueError` into a 400 naming the parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from engine.structured_output import StructuredOutput
from engine.wire_form import wire_form

# vLLM's --max-logprobs default: the most logprobs a request may ask for (-1: the vocabulary).
DEFAULT_MAX_LOGPROBS = 20
MAX_STOP_STRINGS = 16
MAX_STOP_STRING_LENGTH = 256
MAX_LOGIT_BIAS_ENTRIES = 1024
MAX_BAD_WORDS = 1024
MAX_BAD_WORD_LENGTH = 256
# vLLM's --logprobs-mode: what logprobs report. "raw": the model's own distribution;
# "processed": after logit_bias, penalties, token masks and, for sampled rows,
# temperature, top-k, top-p and min-p (a token they exclude: -inf). "_logits" modes
# report the values before the softmax instead of logprobs.
LOGPROBS_MODES = ("raw_logprobs", "raw_logits", "processed_logprobs", "processed_logits")
MAX_N = 128  # OpenAI's limit; siblings past max_num_seqs wait their turn
# Temperatures below this are greedy (vLLM's _SAMPLING_EPS): dividing float32 logits by
# 1e-38 overflows them to inf (and 1e-300 is 0 in float32), and sampling at 1e-5 picks
# the top token anyway.
GREEDY_BELOW_TEMPERATURE = 1e-5


class SamplingParamError(ValueError):
    """A sampling parameter is out of range; `param` names it for the API's error body."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


@dataclass(frozen=True)
class SamplingParams:
    """What to sample and when to stop, in vLLM's vocabulary.

    temperature 0 (or below GREEDY_BELOW_TEMPERATURE) means greedy. top_k <= 0 disables
    top-k. max_tokens None means "until the context is full".
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = None
    seed: int | None = None
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    # The output must match this (a JSON schema, regex, choice or grammar); None: free text.
    structured_output: StructuredOutput | None = None
    # vLLM's: only these token ids may be sampled (None: any).
    allowed_token_ids: tuple[int, ...] | None = None
    # vLLM's: words the output must not contain (engine/bad_words.py). The engine
    # tokenizes them into bad_words_token_ids when it queues the request.
    bad_words: tuple[str, ...] = ()
    bad_words_token_ids: tuple[tuple[int, ...], ...] | None = None
    # vLLM's: beam search of width n instead of sampling (engine/beam_search.py), its
    # hypotheses scored logprob / length ** length_penalty.
    use_beam_search: bool = False
    length_penalty: float = 1.0

    # Fields newer than the wire protocol's first release: sent only when set (see
    # engine/wire_form.py); the token ids of bad_words are the engine's own work.
    ADDED_FIELDS = ("allowed_token_ids", "bad_words", "use_beam_search", "length_penalty")
    DERIVED_FIELDS = ("bad_words_token_ids",)

    def wire(self) -> dict[str, object]:
        """What the API queues for workers (engine/wire_form.py)."""
        return wire_form(self, self.ADDED_FIELDS, self.DERIVED_FIELDS)

    def __post_init__(self) -> None:
        # Accept lists/strings from callers but store immutable tuples.
        for optional in ("stop", "stop_token_ids", "bad_words"):  # vLLM's default None
            if getattr(self, optional) is None:
                object.__setattr__(self, optional, ())
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop))
        if not isinstance(self.stop_token_ids, tuple):
            object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        if self.allowed_token_ids is not None and not isinstance(self.allowed_token_ids, tuple):
            object.__setattr__(self, "allowed_token_ids", tuple(self.allowed_token_ids))
        if isinstance(self.bad_words, str):
            object.__setattr__(self, "bad_words", (self.bad_words,))
        elif not isinstance(self.bad_words, tuple):
            object.__setattr__(self, "bad_words", tuple(self.bad_words))
        if self.bad_words_token_ids is not None:
            object.__setattr__(
                self, "bad_words_token_ids", tuple(tuple(ids) for ids in self.bad_words_token_ids)
            )
        self._validate()

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW_TEMPERATURE

    @property
    def needs_penalties(self) -> bool:
        return (
            self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
            or self.repetition_penalty != 1.0
        )

    def _validate(self) -> None:
        def fail(param: str, message: str) -> None:
            raise SamplingParamError(param, message)

        if not 1 <= self.n <= MAX_N:
            fail("n", f"must be between 1 and {MAX_N}, got {self.n}")
        if not 0.0 <= self.temperature < math.inf:  # vLLM's range: OpenAI's ends at 2
            fail("temperature", f"must be a non-negative number, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            fail("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            fail("top_k", f"must be -1 or 0 (disabled) or a positive integer, got {self.top_k}")
        if not 0.0 <= self.min_p <= 1.0:
            fail("min_p", f"must be between 0 and 1, got {self.min_p}")
        if not -2.0 <= self.presence_penalty <= 2.0:
            fail("presence_penalty", f"must be between -2 and 2, got {self.presence_penalty}")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            fail("frequency_penalty", f"must be between -2 and 2, got {self.frequency_penalty}")
        if not 0.0 < self.repetition_penalty < math.inf:  # vLLM's range: no upper bound
            fail("repetition_penalty", f"must be a positive number, got {self.repetition_penalty}")
        if self.max_tokens is not None and self.max_tokens < 1:
            fail("max_tokens", f"must be at least 1, got {self.max_tokens}")
        if self.min_tokens < 0:
            fail("min_tokens", f"must be non-negative, got {self.min_tokens}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            fail(
                "min_tokens",
                f"must not exceed max_tokens ({self.max_tokens}), got {self.min_tokens}",
            )
        if len(self.stop) > MAX_STOP_STRINGS:
            fail("stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                fail("stop", "stop strings must be non-empty strings")
            if len(s) > MAX_STOP_STRING_LENGTH:
                fail("stop", f"stop strings must be at most {MAX_STOP_STRING_LENGTH} characters")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            fail("stop_token_ids", "must be non-negative integers")
        if self.logit_bias is not None:
            if len(self.logit_bias) > MAX_LOGIT_BIAS_ENTRIES:
                fail("logit_bias", f"at most {MAX_LOGIT_BIAS_ENTRIES} entries")
            for token, bias in self.logit_bias.items():
                if not isinstance(token, int) or token < 0:
                    fail("logit_bias", f"keys must be token ids, got {token!r}")
                if not -100.0 <= bias <= 100.0:
                    fail("logit_bias", f"values must be between -100 and 100, got {bias}")
        if self.allowed_token_ids is not None:
            if not self.allowed_token_ids:
                fail("allowed_token_ids", "must name at least one token id")
            if self.structured_output is not None:
                # Their tokens rarely meet: the first token the constraint needs ('{' of
                # a JSON object) is seldom allowed, and no choice of either would hold.
                fail(
                    "allowed_token_ids",
                    "cannot be combined with a structured-output constraint (response_format, "
                    "guided_*, structured_outputs or a forced tool call), which decides itself "
                    "which tokens may come next",
                )
            if any(not isinstance(t, int) or t < 0 for t in self.allowed_token_ids):
                fail("allowed_token_ids", "must be non-negative integers")
        if len(self.bad_words) > MAX_BAD_WORDS:
            fail("bad_words", f"at most {MAX_BAD_WORDS} words, got {len(self.bad_words)}")
        for word in self.bad_words:
            if not isinstance(word, str) or not word.strip():
                fail("bad_words", "must be non-empty strings")
            if len(word) > MAX_BAD_WORD_LENGTH:
                fail("bad_words", f"words must be at most {MAX_BAD_WORD_LENGTH} characters")
        if self.bad_words_token_ids is not None and any(
            not ids or any(not isinstance(t, int) or t < 0 for t in ids)
            for ids in self.bad_words_token_ids
        ):
            fail("bad_words", "token sequences must be non-empty lists of token ids")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and value < 0:
                fail(name, f"must be non-negative, got {value}")
        if self.seed is not None and not -(2**63) <= self.seed < 2**63:
            fail("seed", "must fit in a signed 64-bit integer")
        if self.structured_output is not None and not isinstance(
            self.structured_output, StructuredOutput
        ):
            fail("structured_output", "must be a StructuredOutput")
        if not math.isfinite(self.length_penalty):
            fail("length_penalty", f"must be a finite number, got {self.length_penalty}")
        if self.use_beam_search:
            self._validate_beam_search(fail)

    def _validate_beam_search(self, fail: Callable[[str, str], None]) -> None:
        """Beam search ranks beams by the model's log-probabilities and ends them on
        EOS, stop_token_ids and the length limit: a knob that would reshape those scores
        or end a beam on text is refused, never silently dropped. Sampling's own knobs
        (temperature, top_p, top_k, min_p, seed) choose nothing here, as in HF's beam
        search without sampling, and are accepted."""
        refused = {
            "stop": bool(self.stop),
            "prompt_logprobs": self.prompt_logprobs is not None,
            "presence_penalty": self.presence_penalty != 0.0,
            "frequency_penalty": self.frequency_penalty != 0.0,
            "repetition_penalty": self.repetition_penalty != 1.0,
            "logit_bias": bool(self.logit_bias),
            "allowed_token_ids": self.allowed_token_ids is not None,
            "bad_words": bool(self.bad_words),
            "structured_output": self.structured_output is not None,
        }
        for name, used in refused.items():
            if used:
                fail(name, "cannot be combined with use_beam_search")

    def validate_against_vocab(
        self, vocab_size: int, max_logprobs: int = DEFAULT_MAX_LOGPROBS
    ) -> None:
        """Token ids and the logprobs asked for can only be checked once the model (and the
        server's --max-logprobs) is known."""
        limit = vocab_size if max_logprobs < 0 else min(max_logprobs, vocab_size)
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and value > limit:
                raise SamplingParamError(
                    name, f"must be at most {limit} (the server's --max-logprobs), got {value}"
                )
        for token in self.logit_bias or {}:
            if token >= vocab_size:
                raise SamplingParamError(
                    "logit_bias", f"token id {token} is outside the vocabulary ({vocab_size})"
                )
        for name in ("stop_token_ids", "allowed_token_ids"):
            for token in getattr(self, name) or ():
                if token >= vocab_size:
                    raise SamplingParamError(
                        name, f"token id {token} is outside the vocabulary ({vocab_size})"
                    )
        for ids in self.bad_words_token_ids or ():
            if any(token >= vocab_size for token in ids):
                raise SamplingParamError(
                    "bad_words",
                    f"token ids {list(ids)} are not all in the vocabulary ({vocab_size})",
                )
