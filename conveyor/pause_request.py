"""What the API asks of a model's engines with vLLM's `POST /pause` and `/resume`, as its
`pause` key holds it (no torch: the API writes it, workers read it and announce the gen
they reached).

A desired state, as sleep mode's is (conveyor/sleep_request.py): every worker of the
model, one started later included, converges on it (workers/pause_control.py). Pausing
keeps the weights and the KV cache where they are, for an RL loop that swaps weights
between rollouts: requests that arrive while paused wait in the model's streams, and
run after `/resume`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from conveyor.json_object import json_object

# vLLM's modes, for the requests an engine holds when paused: ended at once with the
# text they have and finish_reason "abort" (the default), finished first, or frozen where
# they stand and carried on after /resume.
ABORT = "abort"
WAIT = "wait"
KEEP = "keep"
MODES = (ABORT, WAIT, KEEP)


@dataclass(frozen=True)
class PauseRequest:
    """Paused or not, the mode of the pause, whether the prefix cache is emptied once the
    engine holds nothing (not with mode keep: its requests still read their blocks), and
    the call's gen (conveyor/rollout_gen.py)."""

    paused: bool
    gen: str
    mode: str = ABORT
    clear_cache: bool = True

    def encode(self) -> str:
        return json.dumps(
            {
                "paused": self.paused,
                "gen": self.gen,
                "mode": self.mode,
                "clear_cache": self.clear_cache,
            }
        )

    @classmethod
    def decode(cls, raw: str | None) -> PauseRequest | None:
        """None for a missing or unreadable key (not paused)."""
        value = json_object(raw)
        if value is None:
            return None
        paused, gen = value.get("paused"), value.get("gen")
        mode, clear_cache = value.get("mode", ABORT), value.get("clear_cache", True)
        if (
            not isinstance(paused, bool)
            or not isinstance(gen, str)
            or mode not in MODES
            or not isinstance(clear_cache, bool)
        ):
            return None
        return cls(paused, gen, mode, clear_cache)
