"""JSON as the standard has it: Python's json also reads NaN, Infinity and numbers past
a float's range (as inf), which no other reader takes back, so a value read here can
always be written out again as JSON."""

from __future__ import annotations

import json
import math
from typing import Any


def strict_json_loads(text: str | bytes) -> Any:
    """json.loads, refusing NaN, Infinity and overflowing numbers with a ValueError."""
    return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of a float's range")
    return value
