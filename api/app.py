"""The FastAPI application: wiring only (lifespan, middleware, error handlers, routers).

The lifespan owns the process-wide pieces: one Redis client, the one reply
subscription, the model catalog. They are created before the first request is
accepted (so no reply can arrive before its subscription) and closed after the
last one finishes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI

from api.body_limit import BodyLimitMiddleware
from api.catalog import ModelCatalog
from api.deps import key_digest
from api.errors import install_error_handlers
from api.reply_router import ReplyRouter
from api.request_submitter import RequestSubmitter
from api.routes import chat, completions, models, ops, tokenize
from conveyor.bus import BusNames
from conveyor.settings import Settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """Build the app; nothing connects until the server runs the lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.redis_url:
            raise RuntimeError("the API needs --redis-url (CONVEYOR_REDIS_URL)")
        redis = aioredis.from_url(settings.redis_url, decode_responses=True)
        names = BusNames(settings.redis_prefix)
        instance = settings.resolved_instance_id("api")
        replies = ReplyRouter(redis, names, instance)
        catalog = ModelCatalog(redis, names, chat_template=settings.chat_template)
        try:
            await replies.start()
            app.state.redis = redis
            app.state.names = names
            app.state.instance = instance
            app.state.router = replies
            app.state.catalog = catalog
            app.state.submitter = RequestSubmitter(redis, names, replies, settings)
            logger.info("API instance %s listening for replies on %s", instance, replies.channel)
            yield
        finally:
            await replies.stop()
            catalog.close()
            await redis.aclose()

    app = FastAPI(
        title="conveyor",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.started = int(time.time())
    app.state.api_key_digest = (
        key_digest(settings.api_key.get_secret_value()) if settings.api_key else None
    )
    install_error_handlers(app)
    for module in (chat, completions, models, tokenize, ops):
        app.include_router(module.router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    return app
