"""The FastAPI application: wiring only (lifespan, middleware, error handlers, routers).

The lifespan owns the process-wide pieces: one Redis client, the one reply
subscription, the model catalog, the database (its schema checked, or on
SQLite brought up to date), the key cache, the request-log buffer and the
file storage. They are created before the first request is accepted (so no
reply can arrive before its subscription) and closed after the last one
finishes, the log buffer flushing what it holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import anyio.to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api.auth import Authenticator
from api.background_responses import BackgroundResponses
from api.batch_dispatch import BatchDispatcher
from api.batch_line_answers import StoredLineAnswer, on_stored_answer
from api.body_limit import BodyLimitMiddleware
from api.catalog import ModelCatalog
from api.custom_middleware import add_custom_middleware
from api.errors import install_error_handlers
from api.invocations import InvocationsMiddleware
from api.key_cache import KeyCache
from api.rate_limiter import RateLimiter
from api.redis_client import api_redis
from api.refusal_memo import RefusalMemo
from api.reply_router import ReplyRouter
from api.request_id_header import ANTHROPIC_HEADER, HEADER, RequestIdMiddleware
from api.request_log_buffer import RequestLogBuffer
from api.request_submitter import RequestSubmitter
from api.retention import Retention
from api.revoked_key_watch import RevokedKeyWatch
from api.routes import (
    abort_requests,
    batches,
    chat,
    classify,
    completions,
    embeddings,
    files,
    generate_tokens,
    invocations,
    lora_adapters,
    messages,
    models,
    ops,
    organization_api_keys,
    organization_projects,
    organization_usage,
    pause,
    pooling,
    prefix_cache,
    profile,
    render,
    responses,
    score,
    sleep_mode,
    tokenize,
    tokenizer_info,
    weight_transfer,
)
from api.routes.ops import __version__
from api.shutdown_drain import ShutdownDrain
from api.usage_middleware import UsageMiddleware
from conveyor.bus import BusNames
from conveyor.db.database import Database
from conveyor.db.migrate import prepare_schema
from conveyor.db.request_log_writer import write_request_logs
from conveyor.file_storage import LocalFileStorage
from conveyor.settings import Settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """Build the app; nothing connects until the server runs the lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.redis_url:
            raise RuntimeError("the API needs --redis-url (CONVEYOR_REDIS_URL)")
        database = Database(settings.resolved_database_url)
        await anyio.to_thread.run_sync(prepare_schema, database.url)
        redis = api_redis(settings.redis_url)
        names = BusNames(settings.redis_prefix)
        instance = settings.resolved_instance_id("api")
        catalog = ModelCatalog(
            redis,
            names,
            chat_template=settings.chat_template,
            content_format=settings.chat_template_content_format,
        )
        replies = ReplyRouter(
            redis,
            names,
            instance,
            model_served=catalog.serves,
            worker_loss_timeout=settings.worker_loss_timeout,
            log_outputs=settings.enable_log_requests and settings.enable_log_outputs,
            max_log_len=settings.max_log_len,
        )
        key_cache = KeyCache(database, ttl=settings.key_cache_ttl)
        log_buffer = RequestLogBuffer(
            partial(write_request_logs, database),
            flush_interval=settings.log_flush_interval,
            max_rows=settings.log_buffer_max_rows,
        )
        key_watch = RevokedKeyWatch(database, replies)
        background = BackgroundResponses(
            redis, names, database, settings.request_timeout, settings.drain_timeout, key_watch
        )
        file_storage = LocalFileStorage(settings.data_dir / "files")
        retention = Retention(
            database, file_storage, settings.response_retention_days, settings.purge_interval
        )
        try:
            await replies.start()
            log_buffer.start()
            retention.start()
            app.state.database = database
            app.state.key_cache = key_cache
            app.state.file_storage = file_storage
            app.state.authenticator = Authenticator(settings, key_cache)
            app.state.rate_limiter = RateLimiter(redis, names)
            app.state.refusal_memo = RefusalMemo()
            app.state.log_buffer = log_buffer
            app.state.redis = redis
            app.state.names = names
            app.state.instance = instance
            app.state.router = replies
            app.state.catalog = catalog
            app.state.submitter = RequestSubmitter(redis, names, replies, settings)
            app.state.background_responses = background
            app.state.key_watch = key_watch
            app.state.drain.bind(asyncio.get_running_loop(), replies.close_in_flight)
            logger.info("API instance %s listening for replies on %s", instance, replies.channel)
            yield
        finally:
            # First: a stopped run marks its response failed and logs its request.
            await background.stop(app.state.drain.remaining())
            if app.state.settling:  # rate-limit settlements still on their way to Redis
                await asyncio.wait(set(app.state.settling), timeout=5.0)
            await retention.stop()
            await key_watch.stop()
            await replies.stop()
            await log_buffer.stop()
            catalog.close()
            await redis.aclose()
            database.close()

    docs = not settings.disable_fastapi_docs  # vLLM's /docs, /redoc and /openapi.json
    app = FastAPI(
        title="conveyor",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.settings = settings
    app.state.started = int(time.time())
    # Started by the server's signal handler (api/server.py), before the lifespan ends.
    app.state.drain = ShutdownDrain(settings.drain_timeout)
    # The usage middleware's rate-limit settlements in flight (awaited at shutdown).
    app.state.settling = set()
    app.state.batch_dispatcher = BatchDispatcher(settings)
    install_error_handlers(app)
    app.add_exception_handler(StoredLineAnswer, on_stored_answer)
    for module in (
        chat,
        completions,
        embeddings,
        classify,
        pooling,
        score,
        responses,
        messages,
        generate_tokens,
        render,
        models,
        tokenize,
        ops,
        organization_projects,
        organization_api_keys,
        organization_usage,
        files,
        batches,
        invocations,
    ):
        app.include_router(module.router)
    if settings.allow_runtime_lora_updating:
        app.include_router(lora_adapters.router)
    if settings.profiler is not None:
        logger.warning(
            "--profiler-config: POST /start_profile and /stop_profile are served; recording "
            "slows every step, for local performance work only (traces go to %s)",
            settings.profiler.torch_profiler_dir,
        )
        app.include_router(profile.router)
    if settings.server_dev_mode:  # vLLM's development endpoints, as there
        app.include_router(prefix_cache.router)
        app.include_router(pause.router)
        app.include_router(abort_requests.router)
        app.include_router(weight_transfer.router)
        if settings.enable_sleep_mode:
            app.include_router(sleep_mode.router)
    elif settings.enable_sleep_mode:
        logger.warning(
            "--enable-sleep-mode: POST /sleep, POST /wake_up and GET /is_sleeping are "
            "development endpoints, served only with CONVEYOR_SERVER_DEV_MODE=1 (vLLM's "
            "VLLM_SERVER_DEV_MODE=1), as in vLLM"
        )
    if settings.enable_tokenizer_info_endpoint:
        app.include_router(tokenizer_info.router)
    # Outermost last: CORS answers browsers' preflights first, then the body limit runs,
    # then /invocations finds its route, then usage wraps the routes.
    app.add_middleware(UsageMiddleware)
    app.add_middleware(InvocationsMiddleware)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
    )
    # vLLM's --allowed-origins / -methods / -headers and --allow-credentials (all "*" by
    # default, as there), so browser apps can call the API.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.allowed_origins,
        allow_methods=settings.allowed_methods,
        allow_headers=settings.allowed_headers,
        allow_credentials=settings.allow_credentials,
        # Browser apps may read it, to quote in a report (Anthropic's name for it too).
        expose_headers=[HEADER, ANTHROPIC_HEADER.decode()],
    )
    # The operator's own (--middleware), around all of conveyor's but the request id.
    add_custom_middleware(app, settings.middleware)
    # Outermost: every answer names its request, a preflight's and a 413's included.
    app.add_middleware(RequestIdMiddleware)
    return app
