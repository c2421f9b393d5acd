"""Cancel tasks and wait until they have really stopped.

One `task.cancel()` is not always enough on Python 3.11: `asyncio.wait_for`
returns its operation's result, and drops the cancel, when the operation
completes in the same loop turn as the cancel lands (fixed in 3.12).
redis-py's asyncio client writes commands through `wait_for`, so a task
cancelled during a Redis call carries on about two times in three (measured
with redis-py 8.1 against a local server). A loop that was meant to stop
then runs on; a batch feeder cancelled that way kept sending the batch's
lines after the batch was cancelled. Use this only for tasks whose cleanup
does not itself await: a repeated cancel interrupts such cleanup.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

RECANCEL_SECONDS = 0.1


async def cancel_and_wait(
    tasks: Iterable[asyncio.Future[Any]], *, recancel_every: float = RECANCEL_SECONDS
) -> None:
    """Cancel every task, again each `recancel_every` seconds while any still runs, and
    return once all are done (their results and errors are retrieved, never raised)."""
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=recancel_every)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as never retrieved
