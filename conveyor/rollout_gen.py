"""The generation of an operator call's desired state (sleep mode, prefix-cache resets):
`epoch:n`, n counting up per model, so a call can tell when workers reached its own
change or a later one (a later call overtaking it must not leave it waiting).

The epoch is drawn when a model's key is first written (or after Redis lost it), so a
worker's report of an older Redis's `n` never passes for a newer call's.
"""

from __future__ import annotations

import uuid


def _parse(gen: object) -> tuple[str, int] | None:
    if not isinstance(gen, str):
        return None
    epoch, _, n = gen.rpartition(":")
    return (epoch, int(n)) if epoch and n.isascii() and n.isdigit() else None


def next_gen(current: str | None) -> str:
    """The gen after `current` (None, or not one of ours: a new epoch)."""
    parsed = _parse(current)
    epoch, n = parsed if parsed is not None else (uuid.uuid4().hex[:12], 0)
    return f"{epoch}:{n + 1}"


def covers(reached: object, asked: str) -> bool:
    """Whether a worker that reached `reached` has acted on the call that asked `asked`."""
    mine, theirs = _parse(asked), _parse(reached)
    return mine is not None and theirs is not None and mine[0] == theirs[0] and theirs[1] >= mine[1]
