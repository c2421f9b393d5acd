"""Object ids in OpenAI's style (`proj_…`, `key_…`, `file-…`, `batch_…`), unguessable."""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    """`prefix` joined to 24 random hex digits; the prefix carries its own separator."""
    return f"{prefix}{secrets.token_hex(12)}"
