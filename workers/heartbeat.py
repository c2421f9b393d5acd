"""The heartbeat thread: "this worker is alive, serves this model, has this much room".

The key expires `heartbeat_ttl` after the last beat, so a worker that dies
stops being listed (API: /v1/models, 503 when no worker) and its consumer is
treated as dead by other workers' janitors. Each beat also refreshes the
worker's metrics snapshot, which any API replica's /metrics renders.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from conveyor.beat_file import beat_file, remove, touch
from conveyor.bus import KNOWN_NAME_TTL_SECONDS, BusNames
from conveyor.metrics import WorkerMetrics

logger = logging.getLogger(__name__)

# The snapshot outlives the heartbeat so a scrape just after a worker exits still
# sees its final counts.
_METRICS_TTL_FACTOR = 12


@dataclass(frozen=True)
class WorkerFacts:
    """What does not change while the worker runs."""

    model: str
    instance: str
    capacity: int
    num_kv_blocks: int
    max_model_len: int
    started_at: float
    # "generate" (text) or "pooling" (embeddings): which endpoints the model serves.
    runner: str = "generate"
    pid: int = field(default_factory=os.getpid)
    # Other names the model answers to (vLLM's --served-model-name A B: B here).
    aliases: tuple[str, ...] = ()
    # The model as the worker was given it (a folder, a .gguf, a hub id): /v1/models'
    # `root`, as vLLM's. "" for the served name.
    root: str = ""


# Seconds a beat waits on Redis before it is given up (the next beat tries again).
BEAT_REDIS_TIMEOUT = 2.0


def heartbeat_client(redis_url: str) -> redis.Redis:
    """The heartbeat's own client, quick to give up and never retrying within a beat: a
    Redis that stops answering (a partition) must not hold the beat loop, which also
    touches the probes' beat file, for longer than a beat or two."""
    return redis.Redis.from_url(
        redis_url,
        decode_responses=True,
        socket_connect_timeout=BEAT_REDIS_TIMEOUT,
        socket_timeout=BEAT_REDIS_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
    )


class Heartbeat:
    def __init__(
        self,
        client: redis.Redis,
        names: BusNames,
        facts: WorkerFacts,
        metrics: WorkerMetrics,
        interval: float,
        ttl: float,
        loras: Callable[[], dict[str, str]] = dict,
        lora_gens: Callable[[], dict[str, str]] = dict,
        controls: Callable[[], dict[str, object]] = dict,
    ) -> None:
        self.client = client
        self.facts = facts
        self.metrics = metrics
        self.interval = interval
        # The LoRA adapters served on top of the model now (name -> path): they may change.
        self.loras = loras
        # Each runtime adapter's load generation: how the API knows its call took effect.
        self.lora_gens = lora_gens
        # What sleep mode and prefix-cache resets reached (workers/engine_controls.py).
        self.controls = controls
        # Set to beat before the interval is up: a change the API is waiting to see.
        self._soon = threading.Event()
        self.ttl_ms = max(1, int(ttl * 1000))
        self.names = names
        # For the image's readiness/liveness probe (conveyor/beat_file.py).
        self.beat_file = beat_file(facts.pid)
        self.key = names.worker(facts.model, facts.instance)
        self.metrics_key = names.worker_metrics(facts.instance)
        # Set when the worker stops taking work: API processes then stop routing to it
        # (503 when no other worker is left), while other workers' janitors, which look
        # only at the key, still see it alive and leave its requests alone.
        self.draining = False

    def payload(self) -> dict[str, object]:
        running, waiting, kv_usage = self.metrics.engine_state()
        f = self.facts
        return {
            "model": f.model,
            "aliases": list(f.aliases),
            "instance": f.instance,
            "capacity": f.capacity,
            "running": running,
            "waiting": waiting,
            "kv_cache_usage": kv_usage,
            "num_kv_blocks": f.num_kv_blocks,
            "max_model_len": f.max_model_len,
            "runner": f.runner,
            "root": f.root or f.model,
            "started_at": f.started_at,
            "pid": f.pid,
            "loras": self.loras(),
            "lora_gens": self.lora_gens(),
            "draining": self.draining,
            **self.controls(),
        }

    def beat(self) -> None:
        payload = self.payload()
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.key, json.dumps(payload), px=self.ttl_ms)
        self._write_metrics(pipe)
        self._renew_known_names(pipe, payload["loras"])
        pipe.execute()

    def start_draining(self) -> None:
        """Say at once, not at the next beat, that this worker takes no more work."""
        self.draining = True
        try:
            self.beat()
        except redis.RedisError as exc:
            logger.warning("could not announce the drain (%s)", exc)

    def _renew_known_names(self, pipe: redis.client.Pipeline, loras: object) -> None:
        """Keep this worker's model, aliases and adapters known (404 vs 503) while it
        serves them. Only renewed, never made (xx): the announce makes them, and an
        adapter unloaded meanwhile stays forgotten."""
        model, ttl = self.facts.model, KNOWN_NAME_TTL_SECONDS
        pipe.set(self.names.known_model(model), "1", ex=ttl, xx=True)
        for alias in self.facts.aliases:
            pipe.set(self.names.known_alias(alias), model, ex=ttl, xx=True)
        for adapter in loras if isinstance(loras, dict) else ():
            pipe.set(self.names.known_adapter(adapter), model, ex=ttl, xx=True)

    def beat_soon(self) -> None:
        """Thread-safe and never waits: beat now rather than at the next interval (also
        how a stop is noticed at once)."""
        self._soon.set()

    def run(self, stopping: threading.Event) -> None:
        touch(self.beat_file)  # the model is loaded and announced: ready
        next_beat = time.monotonic() + self.interval
        while True:
            self._soon.wait(max(0.0, next_beat - time.monotonic()))
            self._soon.clear()
            if stopping.is_set():
                return
            if time.monotonic() >= next_beat:  # an early beat leaves the schedule alone
                next_beat += self.interval
            touch(self.beat_file)  # whether or not Redis takes the beat
            try:
                self.beat()
            except redis.RedisError as exc:
                logger.warning("heartbeat failed (%s)", exc)
            next_beat = max(next_beat, time.monotonic())

    def clear(self) -> None:
        """Clean exit: stop being listed at once, leave the final metrics behind."""
        remove(self.beat_file)
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.delete(self.key)
            self._write_metrics(pipe)
            pipe.execute()
        except redis.RedisError as exc:
            logger.warning("could not remove heartbeat %s (%s)", self.key, exc)

    def _write_metrics(self, pipe: redis.client.Pipeline) -> None:
        snapshot = json.dumps(self.metrics.snapshot(), separators=(",", ":"))
        pipe.set(self.metrics_key, snapshot, px=self.ttl_ms * _METRICS_TTL_FACTOR)
