"""Speculative decoding settings, spelled as vLLM's `--speculative-config` JSON.

Only the "ngram" method (prompt lookup) exists here: drafts are copied from
earlier in the sequence itself, so no draft model is loaded. It pays where the
output repeats its input (editing code, quoting a document, extraction) and
costs a little elsewhere (a longer verification query, mostly rejected).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

METHODS = ("ngram",)


class SpeculativeConfigError(ValueError):
    """The speculative config is malformed; the message names the field."""


@dataclass(frozen=True)
class SpeculativeConfig:
    method: str = "ngram"
    # Draft tokens proposed (and verified in one forward pass) per step.
    num_speculative_tokens: int = 4
    # The longest and shortest suffix of the sequence looked up earlier in it.
    prompt_lookup_max: int = 4
    prompt_lookup_min: int = 2

    def __post_init__(self) -> None:
        _check_method(self.method)
        if self.num_speculative_tokens < 1:
            raise SpeculativeConfigError("num_speculative_tokens must be at least 1")
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            raise SpeculativeConfigError(
                "need 1 <= prompt_lookup_min <= prompt_lookup_max, got "
                f"{self.prompt_lookup_min} and {self.prompt_lookup_max}"
            )

    @classmethod
    def parse(cls, value: str | dict[str, Any] | SpeculativeConfig) -> SpeculativeConfig:
        """From vLLM's JSON (or its dict). Given one lookup bound, the other defaults to it,
        as vLLM does; unknown keys are an error rather than a silent no-op."""
        if isinstance(value, SpeculativeConfig):
            return value
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise SpeculativeConfigError(f"speculative config is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise SpeculativeConfigError("speculative config must be a JSON object")
        # Before the keys: a draft model's keys (`model`) come with its method; name that.
        _check_method(value.get("method", cls.method))
        known = {"method", "num_speculative_tokens", "prompt_lookup_max", "prompt_lookup_min"}
        unknown = sorted(set(value) - known)
        if unknown:
            raise SpeculativeConfigError(f"unknown speculative config keys: {', '.join(unknown)}")
        fields = dict(value)
        if "prompt_lookup_max" in fields and "prompt_lookup_min" not in fields:
            fields["prompt_lookup_min"] = min(cls.prompt_lookup_min, fields["prompt_lookup_max"])
        if "prompt_lookup_min" in fields and "prompt_lookup_max" not in fields:
            fields["prompt_lookup_max"] = max(cls.prompt_lookup_max, fields["prompt_lookup_min"])
        for name, item in fields.items():
            if name != "method" and (not isinstance(item, int) or isinstance(item, bool)):
                raise SpeculativeConfigError(f"{name} must be an integer, got {item!r}")
        return cls(**fields)


def _check_method(method: object) -> None:
    if method not in METHODS:
        raise SpeculativeConfigError(
            f"speculative method {method!r} is not supported; use one of {METHODS}"
        )
