"""The prefix-cache salt of a request: who may share its cached prompt blocks.

The engine shares KV blocks only between requests with equal salts. Without one, a
tenant could learn whether another tenant recently sent a prompt (its `cached_tokens`,
or a faster first token) and could fill the cache with blocks others then read. So every
project's requests are salted with the project (`--prefix-cache-scope project`, the
default), and a request's own `cache_salt` (vLLM's field) narrows sharing further: only
requests naming the same salt, in the same project, share blocks.
"""

from __future__ import annotations

import json

from api.auth import Principal


def cache_salt(principal: Principal, requested: str | None, scope: str) -> str | None:
    """The salt the engine keys cached blocks under; None: shared with every unsalted
    request (no project, or `global` scope, and no salt of the request's own)."""
    project = principal.project_id if scope == "project" else None
    if project is None and requested is None:
        return None
    return json.dumps([project, requested], separators=(",", ":"))
