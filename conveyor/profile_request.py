"""What POST /start_profile and /stop_profile ask of a model's workers, as its `profile`
key holds it (no torch: the API writes it, workers read it and announce the gen they
reached, workers/profiler_control.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from conveyor.json_object import json_object


@dataclass(frozen=True)
class ProfileRequest:
    """Recording or not, and the call's gen (conveyor/rollout_gen.py)."""

    on: bool
    gen: str

    def encode(self) -> str:
        return json.dumps({"on": self.on, "gen": self.gen})

    @classmethod
    def decode(cls, raw: str | None) -> ProfileRequest | None:
        value = json_object(raw)
        if value is None:
            return None
        on, gen = value.get("on"), value.get("gen")
        if not isinstance(on, bool) or not isinstance(gen, str):
            return None
        return cls(on, gen)
