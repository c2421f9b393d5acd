"""The janitor thread: requests stranded by dead workers get a second (and third) chance.

A worker that dies leaves its messages pending in the consumer group. Every
`janitor_interval` each live worker looks for messages pending longer than
`janitor_idle` on consumers whose heartbeat key is gone, and claims as many
as it has free slots for. A claimed message that has now been delivered more
than `max_deliveries` times goes to the dead-letter stream and its client gets
an error; the others run here as a new attempt (`attempt` = delivery count).

Why XPENDING + XCLAIM per dead consumer rather than XAUTOCLAIM: XAUTOCLAIM
cannot tell a dead consumer from a live worker that is simply generating a
long answer, and stealing that would run it twice. XCLAIM re-checks the idle
time atomically, so two janitors never both win the same message.

Both lanes are swept, interactive first, so reclaimed interactive requests get
the free slots before reclaimed batch lines; a reclaimed request keeps its lane.

Also: own messages pending from a previous process with the same instance
name (a restarted pod) are reclaimed the same way, and consumers with nothing
pending and no heartbeat are deleted so the group does not grow forever.
"""

from __future__ import annotations

import logging
import threading

import redis

from conveyor.bus import LANES, WORKER_GROUP, BusNames
from conveyor.protocol import ErrorInfo
from workers.dead_letters import dead_letter
from workers.inflight import Inflight, Ticket
from workers.intake import Intake, decode_entry
from workers.publisher import Failed, Publisher

logger = logging.getLogger(__name__)

# Long enough for intake to hand back the slots it holds across one blocking read.
_RESERVE_WAIT = 0.5


class Janitor:
    def __init__(
        self,
        client: redis.Redis,
        names: BusNames,
        model: str,
        instance: str,
        inflight: Inflight,
        intake: Intake,
        publisher: Publisher,
        idle: float,
        max_deliveries: int,
    ) -> None:
        self.client = client
        self.names = names
        self.model = model
        self.streams = {lane: names.requests(model, lane) for lane in LANES}
        self.instance = instance
        self.inflight = inflight
        self.intake = intake
        self.publisher = publisher
        self.idle_ms = max(1, int(idle * 1000))
        self.max_deliveries = max_deliveries

    def run(self, stopping: threading.Event, interval: float) -> None:
        while not stopping.wait(interval):
            try:
                self.sweep()
            except redis.RedisError as exc:
                logger.warning("janitor sweep failed (%s)", exc)

    def sweep(self) -> int:
        """One pass over every lane; returns how many messages this worker took over."""
        taken = 0
        for lane in LANES:
            summary = self.client.xpending(self.streams[lane], WORKER_GROUP)
            for consumer in summary.get("consumers") or []:
                name = consumer["name"]
                if name != self.instance and self._alive(name):
                    continue
                taken += self._reclaim(name, lane)
        for lane in LANES:
            self._forget_dead_consumers(self.streams[lane])
        return taken

    def _alive(self, consumer: str) -> bool:
        return bool(self.client.exists(self.names.worker(self.model, consumer)))

    def _reclaim(self, consumer: str, lane: str) -> int:
        own = consumer == self.instance
        stream = self.streams[lane]
        capacity = self.inflight.capacity
        pending = self.client.xpending_range(
            stream,
            WORKER_GROUP,
            min="-",
            max="+",
            # Own pending entries include the ones being served now; look past them.
            count=capacity + (len(self.inflight) if own else 0),
            consumername=consumer,
            idle=self.idle_ms,
        )
        candidates = [
            p["message_id"]
            for p in pending
            if not (own and self.inflight.holds_stream_id(p["message_id"], lane))
        ]
        if not candidates:
            return 0
        # Only now take slots (intake waits meanwhile): at most what is free.
        slots = self.inflight.reserve(len(candidates), timeout=_RESERVE_WAIT, priority=True)
        if not slots:
            return 0
        used = 0
        try:
            ids = candidates[:slots]
            claimed = self.client.xclaim(
                stream,
                WORKER_GROUP,
                self.instance,
                min_idle_time=self.idle_ms,
                message_ids=ids,
            )
            entries = {sid: fields for sid, fields in claimed if sid is not None}
            pipe = self.client.pipeline(transaction=False)
            for sid in ids:
                pipe.xpending_range(stream, WORKER_GROUP, min=sid, max=sid, count=1)
                pipe.xrange(stream, min=sid, max=sid)
            looked = pipe.execute()
            for i, sid in enumerate(ids):
                info, exists = looked[2 * i], looked[2 * i + 1]
                if not info or info[0]["consumer"] != self.instance:
                    continue  # another janitor won it, or it was acked meanwhile
                if sid not in entries:
                    if not exists:
                        # Redis 6 claims a deleted entry as nil; nothing left to run.
                        self.client.xack(stream, WORKER_GROUP, sid)
                    continue
                deliveries = int(info[0]["times_delivered"])
                used += 1
                if deliveries > self.max_deliveries:
                    self._give_up(sid, entries[sid], deliveries, lane)
                else:
                    logger.info(
                        "reclaimed %s request %s from %s (delivery %d)",
                        lane,
                        sid,
                        consumer,
                        deliveries,
                    )
                    self.intake.accept(sid, entries[sid], attempt=deliveries, lane=lane)
            return used
        finally:
            self.inflight.unreserve(slots - used)

    def _give_up(self, stream_id: str, fields: dict[str, str], deliveries: int, lane: str) -> None:
        """Dead-letter it and answer its client; uses the slot reserved for it."""
        failed_on = deliveries - 1
        reason = f"delivered {deliveries} times (max_deliveries {self.max_deliveries})"
        dead_letter(
            self.client,
            self.names,
            self.model,
            stream_id,
            fields,
            reason,
            deliveries,
            self.instance,
            lane,
        )
        try:
            request = decode_entry(fields)
        except (TypeError, ValueError, KeyError):
            self.inflight.unreserve(1)
            self.client.xack(self.streams[lane], WORKER_GROUP, stream_id)
            self.client.xdel(self.streams[lane], stream_id)
            return
        ticket = Ticket(stream_id, request, deliveries, lane=lane)
        self.inflight.admit(ticket)  # a duplicate id still gets its answer and its ACK
        error = ErrorInfo(
            message=(
                f"the request failed on {failed_on} worker{'s' if failed_on != 1 else ''} "
                "(each stopped while serving it); it was not retried again"
            ),
            type="server_error",
            code="worker_failed",
            status=500,
        )
        self.publisher.put(Failed(ticket, error))

    def _forget_dead_consumers(self, stream: str) -> None:
        for consumer in self.client.xinfo_consumers(stream, WORKER_GROUP):
            name = consumer["name"]
            if name == self.instance or int(consumer.get("pending", 0)) > 0:
                continue
            if not self._alive(name):
                self.client.xgroup_delconsumer(stream, WORKER_GROUP, name)
