"""Futures whose error may outlive everyone awaiting them.

A shielded task (a probe, a scan several requests share, a fetch) goes on after its
callers were cancelled or timed out; when it then fails, nobody retrieves the error and
asyncio logs "Task exception was never retrieved" with a traceback. The callers saw
the failure already (their timeout), so it is retrieved here on purpose.
"""

from __future__ import annotations

import asyncio
from typing import Any


def retrieve_error(future: asyncio.Future[Any]) -> None:
    """A done callback: mark the future's error as seen."""
    if not future.cancelled():
        future.exception()
