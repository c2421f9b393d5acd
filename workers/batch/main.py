"""`conveyor batch-worker`: a Celery worker for batch jobs, plus the orphan sweeper."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.signals import worker_ready, worker_shutting_down

from conveyor.batch_queue import celery_app, queue_name
from conveyor.gc_freeze import freeze_startup_objects, thaw_startup_objects
from conveyor.settings import Settings
from workers.batch.sweeper import BatchSweeper
from workers.batch.tasks import register_tasks

logger = logging.getLogger(__name__)


def run_batch_worker(settings: Settings, log_level: str = "INFO") -> int:
    app = celery_app(settings)
    stopping = threading.Event()
    register_tasks(app, settings, stopping)
    sweeper = BatchSweeper(settings, app)

    def start_sweeper(**_: Any) -> None:
        freeze_startup_objects()
        sweeper.start()

    def stop(**_: Any) -> None:
        thaw_startup_objects()
        sweeper.stop()
        stopping.set()

    worker_ready.connect(start_sweeper, weak=False)
    worker_shutting_down.connect(stop, weak=False)
    if settings.resolved_service_key is None:
        logger.warning(
            "no --service-key or --admin-key: batch lines go to the API without a key, which "
            "an API started with --api-key or --admin-key refuses (lines then wait)"
        )
    logger.info(
        "batch worker: %d batch(es) at a time, lines sent to %s",
        settings.batch_worker_concurrency,
        f"unix:{settings.batch_api_uds}"
        if settings.batch_api_uds
        else settings.resolved_batch_api_url,
    )
    app.worker_main(worker_argv(settings, log_level))
    return 0


def worker_argv(settings: Settings, log_level: str) -> list[str]:
    """Celery's command line for this worker."""
    return [
        # Celery's start-up banner is not a log record: with a --log-config-file (JSON
        # lines for a shipper) it would be the only output that does not parse. (A
        # global option of the `celery` command: before the subcommand.)
        *(["--quiet"] if settings.log_config_file is not None else []),
        "worker",
        f"--loglevel={log_level}",
        f"--concurrency={settings.batch_worker_concurrency}",
        # Threads: a batch is I/O (HTTP lines, SQL rows), and a shutdown must reach the
        # running batches (the `stopping` event) so they hand over instead of blocking it.
        "--pool=threads",
        f"--queues={queue_name(settings)}",
        f"--hostname=batch-{settings.resolved_instance_id('batch')}@%h",
        "--prefetch-multiplier=1",
        "--without-gossip",
        "--without-mingle",
    ]
