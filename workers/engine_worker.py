"""An engine worker: one long-lived process per GPU per model, serving a Redis stream.

Threads, one job each, joined by queues so the engine loop never waits on Redis:

    intake ──Ticket──▶ engine loop ──StepOutputs──▶ publisher ──▶ PUBLISH / SET result / XACK
    janitor ─┘   ▲                  intake/janitor ─Failed──┘
    aborts ──id──┘                  heartbeat: worker key + metrics snapshot
    lora sync ──task──▶ engine loop (runtime LoRA adapters, when allowed)
    engine controls ──sleep request / task──▶ engine loop (sleep mode, prefix-cache resets)

`Inflight` (the held tickets) is the one shared structure; it is what bounds
how much this worker takes from the stream (back-pressure). Shutdown drains:
intake and janitor stop reading, the engine finishes what it holds (up to a
grace period; what is left stays pending for another worker), the publisher
flushes, and the heartbeat key is deleted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis

from conveyor.beat_file import beat_file, remove
from conveyor.bus import LANES, BusNames
from conveyor.child_process import CONFIGURATION_ERROR, supervisor_gone
from conveyor.gc_freeze import frozen_while_serving
from conveyor.interrupt_request import interrupt_memory
from conveyor.metrics import WorkerMetrics
from conveyor.redis_wait import redis_answers_at_start
from conveyor.served_names import mark_expected_known, served_aliases
from conveyor.settings import Settings
from engine.config import DeviceUnavailable, EngineConfig
from engine.configuration_error import ConfigurationError
from engine.generation_defaults import (
    GenerationConfigError,
    check_source,
    generation_defaults,
    parse_overrides,
)
from engine.llm_engine import LLMEngine
from engine.loader import HubUnavailable
from workers.aborts import AbortListener
from workers.announce import Announcer
from workers.engine_controls import EngineControls
from workers.engine_loop import EngineLoop
from workers.heartbeat import Heartbeat, WorkerFacts, heartbeat_client
from workers.inflight import Inflight, Ticket
from workers.intake import BATCH_PRIORITY_FLOOR, Intake
from workers.interrupt_book import InterruptBook
from workers.janitor import Janitor
from workers.lora_sync import LoRASync
from workers.pause_control import PauseControl
from workers.profiler_control import ProfilerControl
from workers.publisher import Publisher
from workers.sleep_control import SleepControl
from workers.stats_logger import StatsLogger

logger = logging.getLogger(__name__)

DEFAULT_DRAIN_TIMEOUT = 30.0
_JOIN_TIMEOUT = 10.0


class EngineWorker:
    def __init__(
        self,
        engine: LLMEngine,
        redis_url: str,
        names: BusNames,
        instance: str,
        settings: Settings,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    ) -> None:
        self.engine = engine
        self.names = names
        self.instance = instance
        self.settings = settings
        self.drain_timeout = drain_timeout
        self.model = engine.model_name
        self.streams = [names.requests(self.model, lane) for lane in LANES]
        self.capacity = engine.config.max_num_seqs
        # One pool for all threads (redis-py clients are thread-safe); the blocking
        # XREADGROUP and the subscription each hold their own connection from it.
        self.client = redis.Redis.from_url(redis_url, decode_responses=True)
        self.beat_client = heartbeat_client(redis_url)
        self.inflight = Inflight(self.capacity)
        self.metrics = WorkerMetrics(
            self.model, instance, cache_config_info(engine), max_model_len=engine.max_model_len
        )
        work: queue.Queue[Ticket] = queue.Queue()
        self.publisher = Publisher(
            self.client,
            names,
            self.model,
            instance,
            self.inflight,
            self.metrics,
            settings.result_ttl,
        )
        stats_log = (
            None
            if settings.disable_log_stats
            else StatsLogger(instance, self.metrics.token_counts, settings.log_stats_interval)
        )
        # Sleep mode: every worker honours it (the API mounts /sleep with
        # --enable-sleep-mode and dev mode), so one deployed without them never holds a
        # call up.
        self.sleep = SleepControl(engine, announce=lambda: self.heartbeat.beat_soon())
        # POST /pause and /resume (dev mode), honoured by every worker for the same reason.
        self.pause = PauseControl(engine, announce=lambda: self.heartbeat.beat_soon())
        self.loop = EngineLoop(
            engine,
            self.inflight,
            self.publisher,
            self.metrics,
            work,
            self.sleep,
            self.pause,
            InterruptBook(interrupt_memory(settings.request_timeout)),
            stats_log,
        )
        aliases = served_aliases(settings, engine.model_name)
        self.announcer = Announcer(
            self.client, names, engine, served_sampling_defaults(engine, settings), aliases
        )
        self.intake = Intake(
            self.client,
            names,
            self.model,
            instance,
            self.inflight,
            self.publisher,
            work,
            on_lost_group=self.announcer.announce,
            prepare=engine.prepare,
            served_loras=lambda: engine.lora_names,
            classifier=engine.model_config.is_classifier,
            reads_token_types=engine.model_config.is_classifier
            and engine.model_config.type_vocab_size >= 2,
            paused=lambda: self.sleep.leaves_work_to_peers or self.pause.holds,
        )
        self.janitor = Janitor(
            self.client,
            names,
            self.model,
            instance,
            self.inflight,
            self.intake,
            self.publisher,
            idle=settings.janitor_idle,
            max_deliveries=settings.max_deliveries,
        )
        self.aborts = AbortListener(
            self.client,
            names,
            self.inflight,
            self.loop.abort,
            self.loop.interrupt,
            interrupt_memory(settings.request_timeout),
        )
        facts = WorkerFacts(
            model=self.model,
            instance=instance,
            capacity=self.capacity,
            num_kv_blocks=engine.stats().num_kv_blocks,
            max_model_len=engine.max_model_len,
            started_at=time.time(),
            runner=engine.runner_kind,
            aliases=aliases,
            root=engine.config.model or engine.resolved.source,
        )
        self.heartbeat = Heartbeat(
            self.beat_client,
            names,
            facts,
            self.metrics,
            interval=settings.heartbeat_interval,
            ttl=settings.heartbeat_ttl,
            loras=lambda: engine.lora_paths,
            lora_gens=lambda: self.lora_sync.served_gens if self.lora_sync is not None else {},
            controls=self._controls_reached,
        )
        profiler_config = settings.profiler
        self.profiler = (
            ProfilerControl(profiler_config, self.model, instance)
            if profiler_config is not None
            else None
        )
        self.controls = EngineControls(
            self.client,
            names,
            self.model,
            instance,
            self.sleep,
            self.pause,
            self.loop.call_soon,
            beat_now=self.heartbeat.beat_soon,
            interval=settings.heartbeat_interval,
            profiler=self.profiler,
        )
        self.lora_sync = (
            LoRASync(
                self.client,
                names,
                self.model,
                instance,
                engine,
                self.loop.call_soon,
                interval=settings.heartbeat_interval,
            )
            if settings.allow_runtime_lora_updating and engine.loras is not None
            else None
        )
        self._failed = False

    def run(self, stop: threading.Event) -> int:
        """Serve until `stop` is set, then drain; 0 on a clean exit, 1 if a thread failed."""
        self.announcer.announce()
        self.aborts.subscribe()
        if self.lora_sync is not None:
            # Serve the runtime adapters before announcing: an adapter is offered only
            # while every worker of the model announces it.
            self.lora_sync.converge_now()
        self.controls.converge_now()  # a sleeping or paused model is joined so
        self._first_beat(stop)  # listed (and alive to other janitors) before taking work
        logger.info(
            "worker %s serving %s from streams %s, capacity %d",
            self.instance,
            self.model,
            ", ".join(self.streams),
            self.capacity,
        )
        stopping = threading.Event()  # intake and janitor: take no more work
        intake_closed = threading.Event()  # engine loop: finish what you hold
        finished = threading.Event()  # abort listener and heartbeat: done
        s = self.settings
        publisher = self._start("publisher", self.publisher.run, stop)
        aborts = self._start("aborts", lambda: self.aborts.run(finished), stop)
        heartbeat = self._start("heartbeat", lambda: self.heartbeat.run(finished), stop)
        controls = self._start("engine-controls", lambda: self.controls.run(finished), stop)
        lora_sync = self.lora_sync
        syncing = (
            self._start("lora-sync", lambda: lora_sync.run(finished), stop)
            if lora_sync is not None
            else None
        )
        intake = self._start("intake", lambda: self.intake.run(stopping), stop)
        janitor = self._start(
            "janitor", lambda: self.janitor.run(stopping, s.janitor_interval), stop
        )

        def conduct_drain() -> None:
            stop.wait()
            logger.info("worker %s draining %d requests", self.instance, len(self.inflight))
            self.heartbeat.start_draining()
            stopping.set()
            intake.join()
            janitor.join()
            intake_closed.set()

        conductor = self._start("drain", conduct_drain, stop)
        # The engine loop runs on the calling (main) thread: torch ops issued from a
        # secondary thread pay a large per-op cost in OpenMP's thread team (measured
        # here: a 64x576 add takes ~70 us off the main thread, ~4 us on it).
        try:
            self.loop.run(intake_closed, self._drain_seconds)
        except BaseException:
            logger.exception("the engine loop died; stopping the worker")
            self._failed = True
            stop.set()
        finally:
            if self.profiler is not None:
                self.profiler.shutdown()  # a recording still on is written, not lost
        conductor.join()
        self.publisher.close()
        publisher.join(_JOIN_TIMEOUT + 30.0)
        finished.set()
        self.heartbeat.beat_soon()  # to see `finished` now, not at its next beat
        aborts.join(_JOIN_TIMEOUT)
        heartbeat.join(_JOIN_TIMEOUT)
        controls.join(_JOIN_TIMEOUT)
        if syncing is not None:
            syncing.join(_JOIN_TIMEOUT)
        self.heartbeat.clear()
        self.beat_client.close()
        self.client.close()
        logger.info("worker %s stopped", self.instance)
        return 1 if self._failed else 0

    def _controls_reached(self) -> dict[str, object]:
        """The heartbeat's word on sleep mode, pauses and prefix-cache resets: what the
        API's calls wait for, and whether this worker refuses requests while asleep."""
        return {
            "sleep": self.sleep.state.payload(),
            "sleeping": self.sleep.refuses,
            "pause": {"gen": self.pause.reached, "paused": self.pause.holds},
            "weights": self.controls.weights_reached,
            "prefix_cache_reset": self.controls.prefix_cache_reset_gen,
            "profile": self.profiler.reached if self.profiler is not None else None,
        }

    def _drain_seconds(self) -> float:
        """Read when the drain starts. An orphan of `conveyor serve` has no one left to
        deliver to (its Redis and API die with the supervisor): it stops at once."""
        if supervisor_gone(self.settings.supervisor_pid):
            logger.warning("`conveyor serve` is gone: stopping without a drain")
            self.publisher.retry_for = 0.0
            return 0.0
        return self.drain_timeout

    def _first_beat(self, stop: threading.Event) -> None:
        """Beat once before taking work, trying again while Redis hiccups: the heartbeat's
        client gives up fast and never retries, and a worker that has loaded its model
        must not exit (and load it all again) over one slow reply."""
        while True:
            try:
                self.heartbeat.beat()
                return
            except redis.RedisError as exc:
                logger.warning("first heartbeat failed (%s); trying again", exc)
                if stop.wait(1.0):
                    return

    def _start(
        self, name: str, target: Callable[[], None], stop: threading.Event
    ) -> threading.Thread:
        def guarded() -> None:
            try:
                target()
            except BaseException:
                # Each loop handles its expected failures; reaching here is a bug or a
                # broken engine, so the whole worker stops (and drains) rather than limp.
                logger.exception("worker thread %r died; stopping the worker", name)
                self._failed = True
                stop.set()

        thread = threading.Thread(target=guarded, name=f"worker-{name}", daemon=True)
        thread.start()
        return thread


def worker_engine_config(settings: Settings) -> EngineConfig:
    """The settings' engine config, with batch lines as background work.

    Every batch request's engine priority is at least BATCH_PRIORITY_FLOOR and
    every interactive one's below it, so the scheduler caps exactly the batch
    lane's prefill (`--batch-prefill-tokens`) and never an interactive prompt.
    """
    return dataclasses.replace(settings.engine_config(), background_priority=BATCH_PRIORITY_FLOOR)


def served_sampling_defaults(engine: LLMEngine, settings: Settings) -> dict[str, int | float]:
    """--generation-config's defaults over --override-generation-config, logged as vLLM
    does: a model's recommended sampling changes answers, so operators should know."""
    defaults = generation_defaults(
        Path(engine.resolved.path),
        settings.generation_config,
        parse_overrides(settings.override_generation_config),
    )
    if defaults:
        logger.info(
            "sampling defaults for requests that leave them unset: %s (from --generation-config "
            "%s%s; --generation-config vllm for none)",
            json.dumps(defaults, sort_keys=True),
            settings.generation_config,
            " and --override-generation-config" if settings.override_generation_config else "",
        )
    return defaults


def cache_config_info(engine: LLMEngine) -> dict[str, str]:
    """The labels of vLLM's `vllm:cache_config_info` for this engine (conveyor/metrics.py):
    its KV blocks count as vLLM's GPU blocks on any device; there is no CPU swap space."""
    config = engine.config
    return {
        "block_size": str(config.block_size),
        "cache_dtype": config.kv_cache_dtype,
        "enable_prefix_caching": str(config.enable_prefix_caching),
        "gpu_memory_utilization": str(config.gpu_memory_utilization),
        "num_gpu_blocks": str(engine.num_kv_blocks),
        "num_cpu_blocks": "None",
    }


def run_worker(settings: Settings, stop: threading.Event | None = None) -> int:
    """`conveyor worker MODEL`: load the engine, serve the model's stream until stopped.

    With no `stop` event, SIGTERM and SIGINT start a drain (a second one kills).
    """
    if not settings.redis_url:
        logger.error("a worker needs a Redis to serve from: pass --redis-url")
        return CONFIGURATION_ERROR
    if settings.data_parallel_size > 1 and not settings.device:  # serve gives each a device
        logger.warning(
            "--data-parallel-size %d is for `conveyor serve`; this is one worker: start one "
            "`conveyor worker` per GPU to scale out",
            settings.data_parallel_size,
        )
    # A beat file left by this container's previous run (same pid, a kept /tmp, a kill
    # that skipped the clean exit) must not pass the probes while the model loads.
    remove(beat_file(os.getpid()))
    try:  # a folder without the file stops start-up before the model loads
        check_source(settings.generation_config)
    except GenerationConfigError as exc:
        logger.error("%s", exc)
        return CONFIGURATION_ERROR
    try:
        config = worker_engine_config(settings)
    except ValueError as exc:
        logger.error("%s", exc)
        return CONFIGURATION_ERROR
    if not redis_answers_at_start(settings.redis_url):  # before minutes of loading weights
        return 1
    mark_expected_known(settings, settings.redis_url)
    try:
        engine = LLMEngine(config)
    except ConfigurationError as exc:  # a model, tokenizer or template that cannot work
        logger.error("cannot start the engine: %s", exc)
        return CONFIGURATION_ERROR
    except (DeviceUnavailable, HubUnavailable) as exc:  # perhaps for now: exit 1, restarted
        logger.error("cannot start the engine: %s", exc)
        return 1
    names = BusNames(prefix=settings.redis_prefix)
    instance = settings.resolved_instance_id("worker")
    if stop is None:
        stop = threading.Event()
        _stop_on_signals(stop)
    worker = EngineWorker(
        engine, settings.redis_url, names, instance, settings, drain_timeout=settings.drain_timeout
    )
    with frozen_while_serving():
        return worker.run(stop)


def _stop_on_signals(stop: threading.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, _frame: object) -> None:
        logger.info("received %s: draining (again to exit at once)", signal.Signals(signum).name)
        stop.set()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
