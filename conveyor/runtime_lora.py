"""One runtime LoRA request as the model's `runtime_loras` hash holds it (no torch: the API
writes these, workers read them).

`gen` is unique per load call, so a reload from the same folder is still a
change workers act on and announce, and a call can tell its own request from a
newer one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from conveyor.json_object import json_object


@dataclass(frozen=True)
class RuntimeLoRA:
    """One entry of the model's `runtime_loras` hash."""

    path: str
    gen: str

    def encode(self) -> str:
        return json.dumps({"path": self.path, "gen": self.gen})

    @classmethod
    def decode(cls, raw: str | None) -> RuntimeLoRA | None:
        """None for a missing or unreadable entry."""
        value = json_object(raw)
        if value is None:
            return None
        path, gen = value.get("path"), value.get("gen")
        return cls(path, gen) if isinstance(path, str) and isinstance(gen, str) else None
