"""The dead-letter stream: requests no worker could serve, kept for operators.

A request lands here when it was delivered more than `max_deliveries` times
(it keeps killing workers, or workers keep dying under it) or when its
payload cannot be decoded at all. The entry keeps the original fields and
says which lane's stream it came from, so an operator can inspect it or XADD
it back to that stream. One dead-letter stream per model holds both lanes.
"""

from __future__ import annotations

import time

import redis

from conveyor.bus import INTERACTIVE_LANE, BusNames

# Bounded (approximately, which is cheap) so a crash loop cannot fill Redis.
DEAD_LETTER_MAXLEN = 10_000


def dead_letter(
    client: redis.Redis,
    names: BusNames,
    model: str,
    stream_id: str,
    fields: dict[str, str],
    reason: str,
    deliveries: int,
    worker: str,
    lane: str = INTERACTIVE_LANE,
) -> None:
    entry = dict(fields)
    entry.update(
        {
            "reason": reason,
            "stream_id": stream_id,
            "deliveries": str(deliveries),
            "worker": worker,
            "lane": lane,
            "time": repr(time.time()),
        }
    )
    client.xadd(names.dead_letters(model), entry, maxlen=DEAD_LETTER_MAXLEN, approximate=True)
