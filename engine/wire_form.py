"""Request parameters as they cross Redis to workers of this release or the one before.

A worker refuses parameters it does not know (a silently dropped constraint would be
wrong output), so a field added after the protocol's first release travels only when
a request sets it: an older worker then still serves every request that does not use
it, during a rolling upgrade, and refuses the ones that do. Fields the engine derives
itself (from others, with its tokenizer) never travel.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def wire_form(params: Any, added: tuple[str, ...], derived: tuple[str, ...] = ()) -> dict[str, Any]:
    """`params` (a dataclass) as a JSON-ready dict without `derived` fields, and without
    `added` ones while they hold their defaults."""
    data = dataclasses.asdict(params)
    defaults = {f.name: f.default for f in dataclasses.fields(params)}
    for name in derived:
        data.pop(name, None)
    for name in added:
        if getattr(params, name) == defaults[name]:
            data.pop(name, None)
    return data
