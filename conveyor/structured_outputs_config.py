"""vLLM's `--structured-outputs-config '{"backend": "xgrammar", ...}'`, read as conveyor serves it.

conveyor compiles every constraint with llguidance, so `backend` (any of vLLM's)
and `disable_fallback` (there is no other backend to fall back to) change
nothing. `disable_any_whitespace` is served: JSON constraints allow no
whitespace between tokens (compact output, fewer tokens; a request's own
`whitespace_pattern` still wins). `disable_additional_properties` changes
nothing either: an object schema listing its properties is closed unless it
says otherwise, as vLLM's default backend (xgrammar) closes it. A
`reasoning_parser` must agree with `--reasoning-parser` when both are given.
`enable_in_reasoning` (constraining the thinking too) is not served: refused
at start-up, as is a field vLLM does not have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from conveyor.json_flag import read_json_flag

BACKENDS = ("auto", "xgrammar", "guidance", "outlines", "lm-format-enforcer")
_FIELDS = {
    "backend": str,
    "disable_fallback": bool,
    "disable_any_whitespace": bool,
    "disable_additional_properties": bool,
    "reasoning_parser": str,
    "reasoning_parser_plugin": str,
    "enable_in_reasoning": bool,
}


@dataclass(frozen=True)
class StructuredOutputsConfig:
    # JSON constraints allow no whitespace between tokens (vLLM's disable_any_whitespace).
    compact_json: bool = False
    # The reasoning parser it names ("" for none).
    reasoning_parser: str = ""

    @classmethod
    def parse(cls, config_json: str | None) -> StructuredOutputsConfig:
        """A ValueError names what is wrong; None is vLLM's defaults."""
        if config_json is None:
            return cls()
        value: Any = read_json_flag("--structured-outputs-config", config_json)
        if not isinstance(value, dict):
            raise ValueError("--structured-outputs-config must be a JSON object")
        for key, item in value.items():
            kind = _FIELDS.get(key)
            if kind is None:
                raise ValueError(f"--structured-outputs-config: vLLM has no field {key!r}")
            if not isinstance(item, kind):
                raise ValueError(
                    f"--structured-outputs-config: {key} must be a {kind.__name__}, not {item!r}"
                )
        backend = value.get("backend", "auto")
        if backend not in BACKENDS:
            raise ValueError(
                f"--structured-outputs-config: backend {backend!r} is not one of vLLM's "
                f"({', '.join(BACKENDS)}); conveyor compiles every constraint with llguidance"
            )
        if value.get("enable_in_reasoning"):
            raise ValueError(
                "--structured-outputs-config: enable_in_reasoning is not served (a "
                "constraint applies to the answer, after the model's thinking)"
            )
        if value.get("reasoning_parser_plugin"):
            raise ValueError(
                "--structured-outputs-config: reasoning_parser_plugin is not served "
                "(conveyor loads no parser code; see --reasoning-parser's choices)"
            )
        return cls(
            compact_json=value.get("disable_any_whitespace", False),
            reasoning_parser=value.get("reasoning_parser", ""),
        )
