"""Object ids in OpenAI's style (`proj_…`, `key_…`, `file-…`, `batch_…`): unguessable, and
in creation order.

Lists go newest first by (created_at, id), and created_at counts whole seconds, as
OpenAI's does: ids that start with their creation time in milliseconds keep objects made
in one second in the order they were made (batches created in a loop, then
`batches.list(limit=1)` for the latest). The other half is random (48 bits).
"""

from __future__ import annotations

import re
import secrets
import threading
import time

_ID_TAIL = re.compile(r"([0-9a-f]{12})[0-9a-f]{12}")
_lock = threading.Lock()
_last_ms = 0


def new_id(prefix: str) -> str:
    """`prefix` joined to 24 hex digits: 12 of milliseconds, 12 random. Within a process
    each id's time is past the one before, even within one millisecond."""
    global _last_ms
    with _lock:
        _last_ms = max(_last_ms + 1, time.time_ns() // 1_000_000)
        stamp = _last_ms
    return f"{prefix}{stamp:012x}{secrets.token_hex(6)}"


def created_second(object_id: str, prefix: str) -> int | None:
    """The unix second `new_id(prefix)` made this id in, read from the id itself (so
    even for an object since deleted); None if it is not such an id."""
    if not object_id.startswith(prefix):
        return None
    found = _ID_TAIL.fullmatch(object_id[len(prefix) :])
    return int(found.group(1), 16) // 1000 if found else None
