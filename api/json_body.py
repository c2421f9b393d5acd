"""Reading a body as vLLM's development endpoints read theirs: JSON whatever the
Content-Type says (a trainer's `requests.post(url, data=...)` sends none), and an
empty body as {}."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from api.errors import ApiError


async def json_object_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        value = json.loads(raw) if raw.strip() else {}
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return value
