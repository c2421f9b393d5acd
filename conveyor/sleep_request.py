"""What the API asks of a model's engines in sleep mode, as its `sleep` key holds it (no
torch: the API writes it, workers read it and announce what they reached).

A desired state, not a command: every worker of the model, one started later
included, converges on it (workers/sleep_control.py). `gen` is unique per call,
so the API can tell that its own call took effect everywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from conveyor.json_object import json_object

# vLLM's names for the parts that sleep and wake (`POST /wake_up?tags=...`).
WEIGHTS = "weights"
KV_CACHE = "kv_cache"
PARTS = (WEIGHTS, KV_CACHE)
# What becomes of the requests an engine holds when asked to sleep (vLLM's `mode`): ended
# with an error at once (its default), or finished first.
MODES = ("abort", "wait")


@dataclass(frozen=True)
class SleepRequest:
    """The parts to keep asleep (none: awake), the weights' level, the call's gen
    (conveyor/rollout_gen.py), and what becomes of running requests."""

    asleep: frozenset[str]
    level: int
    gen: str
    mode: str = "abort"

    def encode(self) -> str:
        return json.dumps(
            {"asleep": sorted(self.asleep), "level": self.level, "gen": self.gen, "mode": self.mode}
        )

    @classmethod
    def decode(cls, raw: str | None) -> SleepRequest | None:
        """None for a missing or unreadable key (awake)."""
        value = json_object(raw)
        if value is None:
            return None
        asleep, level, gen = value.get("asleep"), value.get("level"), value.get("gen")
        mode = value.get("mode", "abort")
        if (
            not isinstance(asleep, list)
            or not set(asleep) <= set(PARTS)
            or level not in (1, 2)
            or not isinstance(gen, str)
            or mode not in MODES
        ):
            return None
        return cls(frozenset(asleep), level, gen, mode)


@dataclass(frozen=True)
class SleepState:
    """What a worker reached, in its heartbeat: the gen of the request it last acted on,
    the parts asleep, and why that request failed (None: it took effect)."""

    gen: str | None
    asleep: frozenset[str] = frozenset()
    level: int | None = None
    error: str | None = None

    def payload(self) -> dict[str, object]:
        return {
            "gen": self.gen,
            "asleep": sorted(self.asleep),
            "level": self.level,
            "error": self.error,
        }
