"""What the API asks of a model's engines with vLLM's `POST /update_weights` (the disk
weight-transfer backend), as its `weights` key holds it (no torch: the API writes it,
workers read it and announce the gen they reached).

A desired state, as the sleep and pause keys are: every worker of the model, one
started later included, reads the checkpoint folder the key names into its model
(engine/weight_update.py), so all of them serve the same weights; a worker that
restarts loads its `--model` and then the folder again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from conveyor.json_object import json_object


@dataclass(frozen=True)
class WeightUpdateRequest:
    """The checkpoint folder to serve the weights of (absolute, on every worker's disk;
    None: `--model`'s, where an update every worker failed is put back to), and the
    call's gen (conveyor/rollout_gen.py)."""

    path: str | None
    gen: str

    def encode(self) -> str:
        return json.dumps({"path": self.path, "gen": self.gen})

    @classmethod
    def decode(cls, raw: str | None) -> WeightUpdateRequest | None:
        """None for a missing or unreadable key (the weights `--model` names)."""
        value = json_object(raw)
        if value is None:
            return None
        path, gen = value.get("path"), value.get("gen")
        if not (path is None or (isinstance(path, str) and path)) or not isinstance(gen, str):
            return None
        return cls(path, gen)
