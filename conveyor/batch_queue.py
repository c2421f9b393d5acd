"""The Celery side of batches that every process shares: the app, its queue, the task name.

The API only sends tasks (by name, so it never imports the batch worker's
code); `conveyor batch-worker` registers the task and consumes. Delivery is
at-least-once by design: late acks, a task whose worker process dies is
re-queued, one task prefetched at a time. Running a batch twice is harmless
(a Redis lease admits one runner; results are unique per line).
"""

from __future__ import annotations

import redis
from celery import Celery

from conveyor.bus import BusNames
from conveyor.settings import Settings

RUN_BATCH = "conveyor.run_batch"


def queue_name(settings: Settings) -> str:
    return f"{settings.redis_prefix}:batches"


def celery_app(settings: Settings) -> Celery:
    if not settings.redis_url:
        raise RuntimeError("batches need Redis: set --redis-url (CONVEYOR_REDIS_URL)")
    app = Celery("conveyor", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=queue_name(settings),
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        # A batch can run for hours; redelivery of a live one is refused by its lease,
        # and a dead one is found by the sweeper long before this.
        broker_transport_options={"visibility_timeout": 6 * 3600},
    )
    return app


def send_run_batch(app: Celery, settings: Settings, batch_id: str) -> None:
    app.send_task(RUN_BATCH, args=[batch_id], queue=queue_name(settings))


def queue_batch(app: Celery, client: redis.Redis, settings: Settings, batch_id: str) -> bool:
    """Send the batch's task unless one is already waiting for a worker; True if sent.

    A "queued" mark (with a TTL of `batch_requeue_after`) says a task is
    waiting; the runner clears it when it starts. So batches waiting behind
    busy workers are not queued again by every sweep, and a message the
    broker lost is replaced once the mark expires.
    """
    mark = BusNames(settings.redis_prefix).batch_queued(batch_id)
    hold_ms = max(1, int(settings.batch_requeue_after * 1000))
    if not client.set(mark, "1", nx=True, px=hold_ms):
        return False
    try:
        send_run_batch(app, settings, batch_id)
    except Exception:
        client.delete(mark)  # not queued after all: the next sweep may try again
        raise
    return True
