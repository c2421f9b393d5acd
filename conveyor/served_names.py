"""The names a worker's model answers to, known from its settings before any weights load.

They are marked known in Redis as soon as a worker (or `conveyor serve`) starts, so a
request for the model while it loads gets 503 `no_worker` with Retry-After, not a 404
that says the model does not exist.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis

from conveyor.bus import KNOWN_NAME_TTL_SECONDS, BusNames
from conveyor.settings import Settings
from engine.loader import served_name

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedNames:
    model: str
    # --served-model-name's other names, or the model as given (vLLM's name for it).
    aliases: tuple[str, ...] = ()
    adapters: tuple[str, ...] = ()

    def mark_known(self, pipe: Any, names: BusNames, ttl: int = KNOWN_NAME_TTL_SECONDS) -> None:
        """Queue the `known_*` keys on `pipe` (a Redis client or pipeline)."""
        pipe.set(names.known_model(self.model), "1", ex=ttl)
        for alias in self.aliases:
            pipe.set(names.known_alias(alias), self.model, ex=ttl)
        for adapter in self.adapters:
            pipe.set(names.known_adapter(adapter), self.model, ex=ttl)


def served_aliases(settings: Settings, model_name: str) -> tuple[str, ...]:
    """The model's other names: --served-model-name's after the first; without that flag,
    the model as given (`/models/qwen` for a model served as `qwen`), which is the name
    vLLM would serve it under, so clients written against vLLM still find it."""
    if settings.served_model_name is not None or settings.served_model_aliases:
        return tuple(settings.served_model_aliases)
    given = settings.model
    return (given,) if given and given != model_name else ()


def expected_names(settings: Settings) -> ServedNames:
    """What a worker started with `settings` will announce once its model has loaded."""
    model = settings.served_model_name or served_name(settings.model)
    lora = settings.lora_config()
    adapters = tuple(m.name for m in lora.modules) if lora is not None else ()
    return ServedNames(model, served_aliases(settings, model), adapters)


def mark_expected_known(settings: Settings, redis_url: str) -> None:
    """Before the model loads (minutes, for a big one): requests naming it wait on a 503
    with Retry-After instead of a 404. Best effort: the announce after loading sets them
    again."""
    served = expected_names(settings)
    try:
        with redis.Redis.from_url(redis_url, socket_timeout=5) as client:
            pipe = client.pipeline(transaction=False)
            served.mark_known(pipe, BusNames(prefix=settings.redis_prefix))
            pipe.execute()
    except redis.RedisError as exc:
        logger.warning("could not mark %s as loading in Redis: %s", served.model, exc)
