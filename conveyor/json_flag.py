"""A flag whose value is JSON (vLLM's --*-config flags), read so its errors name the flag.

json.loads alone raises "Expecting value: line 1 column 1", which pydantic reports
without saying which of a hundred settings it came from.
"""

from __future__ import annotations

import json
from typing import Any


def read_json_flag(flag: str, text: str) -> Any:
    """`text` parsed; a ValueError naming `flag` (such as "--profiler-config") if it is not
    JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{flag} is not JSON: {exc}") from exc
