"""Reading a JSON object that another process wrote to Redis (a heartbeat, a desired
state): anything else, or nothing, reads as None rather than raising."""

from __future__ import annotations

import json
from typing import Any


def json_object(raw: str | bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None
