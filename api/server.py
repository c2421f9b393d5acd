"""`conveyor api`: run the HTTP front end under uvicorn."""

from __future__ import annotations

import logging
import math
import socket
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from api.app import create_app
from api.custom_middleware import MiddlewareError
from api.header_timeout import with_header_timeout
from api.shutdown_drain import CLOSE_MARGIN_SECONDS, ShutdownDrain
from conveyor.child_process import CONFIGURATION_ERROR, supervisor_gone
from conveyor.db.database_errors import schema_ready_at_start
from conveyor.gc_freeze import frozen_while_serving
from conveyor.redis_wait import redis_answers_at_start
from conveyor.settings import Settings

logger = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """Exit 0 after a graceful SIGTERM/SIGINT drain instead of re-raising the signal.

    uvicorn re-raises the captured signal once shut down, so the process would die
    "killed by SIGTERM" and `run_api` would never return its status.
    """

    supervisor_pid: int | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list):
            captured.clear()
        drain = getattr(getattr(self.config.app, "state", None), "drain", None)
        if isinstance(drain, ShutdownDrain):
            orphaned = supervisor_gone(self.supervisor_pid)
            if orphaned:
                logger.warning("`conveyor serve` is gone: ending what is in flight, no drain")
            drain.begin(at_once=orphaned)


def uvicorn_config(app: FastAPI, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """How the API is served: vLLM's --uds (instead of --host and --port), --root-path,
    --ssl-* and --uvicorn-log-level."""
    address: dict[str, Any] = (
        {"uds": settings.uds} if settings.uds else {"host": settings.host, "port": settings.port}
    )
    options: dict[str, Any] = {
        **address,
        "log_config": None,  # keep the CLI's logging setup
        "log_level": settings.uvicorn_log_level,
        "access_log": not settings.disable_uvicorn_access_log,
        "root_path": settings.root_path,
        "ssl_keyfile": settings.ssl_keyfile,
        "ssl_certfile": settings.ssl_certfile,
        "ssl_ca_certs": settings.ssl_ca_certs,
        "ssl_cert_reqs": settings.ssl_cert_reqs,
        # The drain (api/shutdown_drain.py) answers what is left before this cuts it.
        "timeout_graceful_shutdown": math.ceil(settings.drain_timeout) + CLOSE_MARGIN_SECONDS,
        "lifespan": "on",
        "http": with_header_timeout(settings.http_header_timeout),
    }
    return uvicorn.Config(app, **{**options, **overrides})


def run_api(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT, then drain: stop accepting, let in-flight requests finish."""
    if not settings.redis_url:
        logger.error("the API needs --redis-url (CONVEYOR_REDIS_URL); `conveyor serve` embeds one")
        return CONFIGURATION_ERROR
    try:
        settings.check_listen_files()
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return CONFIGURATION_ERROR
    # One of --api-server-count's processes: serve on the socket `conveyor serve` opened.
    shared = settings.api_socket_fd is not None
    if not shared and settings.api_server_count > 1:
        logger.warning(
            "--api-server-count %d is for `conveyor serve`; `conveyor api` is one process "
            "(run more of them, e.g. replicas behind a load balancer)",
            settings.api_server_count,
        )
    try:
        app = create_app(settings)
    except MiddlewareError as exc:
        logger.error("%s", exc)
        return CONFIGURATION_ERROR
    if not redis_answers_at_start(settings.redis_url):
        return 1
    # Checked again by the app's lifespan, where a problem is uvicorn's traceback.
    if not schema_ready_at_start(settings.resolved_database_url):
        return 1
    server = _Server(uvicorn_config(app, settings))
    server.supervisor_pid = settings.supervisor_pid
    # The socket over the inherited descriptor itself: uvicorn's `fd=` serves a duplicate
    # and leaves the inherited one open until the process exits, so a draining API kept
    # accepting connections it would never answer.
    sockets = [socket.socket(fileno=settings.api_socket_fd)] if shared else None
    with frozen_while_serving():
        server.run(sockets=sockets)
    # uvicorn reports a failed startup (e.g. Redis unreachable) by exiting the loop early.
    return 0 if server.started else 1
