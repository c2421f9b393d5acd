"""`conveyor api`: run the HTTP front end under uvicorn."""

from __future__ import annotations

import logging
from types import FrameType

import uvicorn

from api.app import create_app
from api.streaming import SHUTDOWN_GRACE_SECONDS
from conveyor.settings import Settings

logger = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """Exit 0 after a graceful SIGTERM/SIGINT drain instead of re-raising the signal.

    uvicorn re-raises the captured signal once shut down, so the process would die
    "killed by SIGTERM" and `run_api` would never return its status.
    """

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list):
            captured.clear()


def run_api(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT, then drain: stop accepting, let in-flight requests finish."""
    if not settings.redis_url:
        logger.error("the API needs --redis-url (CONVEYOR_REDIS_URL); `conveyor serve` embeds one")
        return 2
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep the CLI's logging setup
        timeout_graceful_shutdown=int(SHUTDOWN_GRACE_SECONDS) + 5,
        lifespan="on",
    )
    server = _Server(config)
    server.run()
    # uvicorn reports a failed startup (e.g. Redis unreachable) by exiting the loop early.
    return 0 if server.started else 1
