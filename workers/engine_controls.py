"""The engine-controls thread: what the API asked of this model's engines, read from Redis.

`POST /sleep`, `/wake_up`, `/pause`, `/resume`, `/update_weights`,
`/reset_prefix_cache`, `/start_profile` and `/stop_profile` only write the model's keys
(conveyor/bus.py: `sleep`, `pause`, `weights`, `prefix_cache_reset`, `profile`) and
publish a nudge on
its `controls` channel; every worker of the model, one started later included,
converges on them here: at once when nudged, and once per heartbeat interval
anyway (a nudge lost with a dropped subscription delays a change, never loses
it). Sleep requests go to the engine loop's SleepControl (with whether a peer
is awake, so a refusing worker leaves the stream to it), pause requests to its
PauseControl; a newer weights gen reads its checkpoint folder into the model and
a new prefix-cache reset gen empties the cache, and a new profile gen starts or
stops the torch profiler, each on the engine thread between two steps. The heartbeat announces
what was reached, and is asked to beat at once so the API's call, which waits
for every worker, answers without a beat's delay.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

import redis
from redis.client import PubSub

from conveyor.bus import BusNames
from conveyor.json_object import json_object
from conveyor.pause_request import PauseRequest
from conveyor.profile_request import ProfileRequest
from conveyor.rollout_gen import covers
from conveyor.sleep_request import SleepRequest
from conveyor.weight_update_request import WeightUpdateRequest
from engine.llm_engine import LLMEngine
from workers.pause_control import PauseControl
from workers.profiler_control import ProfilerControl
from workers.sleep_control import SleepControl

logger = logging.getLogger(__name__)

Task = Callable[[LLMEngine], None]

# How often a wait for a nudge looks whether the worker is stopping.
_STOP_CHECK = 0.1


def _newer(asked: str | None, gen: str) -> bool:
    """Whether a key's gen is one this worker has not acted on yet. Only a newer gen: a
    call every worker failed is put back to the older gen, which a worker started since
    must act on and the others have reached already."""
    return gen != asked and not covers(asked, gen)


def _closed(pubsub: PubSub | None) -> None:
    if pubsub is not None:
        with contextlib.suppress(redis.RedisError):
            pubsub.close()


class EngineControls:
    def __init__(
        self,
        client: redis.Redis,
        names: BusNames,
        model: str,
        instance: str,
        sleep: SleepControl,
        pause: PauseControl,
        call_soon: Callable[[Task], None],
        beat_now: Callable[[], None],
        interval: float,
        profiler: ProfilerControl | None = None,
    ) -> None:
        self.client = client
        self.model = model
        self.sleep = sleep
        self.pause = pause
        self.call_soon = call_soon
        self.beat_now = beat_now
        self.interval = interval
        self.names = names
        self.instance = instance
        self.keys = [
            names.sleep(model),
            names.prefix_cache_reset(model),
            names.pause(model),
            names.weights(model),
            names.profile(model),
        ]
        # --profiler-config's recorder (None: the profiler endpoints are off).
        self.profiler = profiler
        self._profile_asked: str | None = None
        self.channel = names.controls(model)
        # The reset gen the engine has reached, for the heartbeat (None: none asked yet).
        self.prefix_cache_reset_gen: str | None = None
        self._reset_asked: str | None = None
        # What the last weight update reached, for the heartbeat: its gen, folder, and
        # why it failed (None: it took effect).
        self.weights_reached: dict[str, str | None] = {"gen": None, "path": None, "error": None}
        self._weights_asked: str | None = None

    def converge_now(self) -> None:
        """Read the keys once before the worker announces itself. A reset asked before
        this engine started is reached already (its cache starts empty); a sleeping model
        is joined asleep by the first turns of the engine loop, which refuses work
        meanwhile; a paused one is joined paused, before the first read of a request; weights
        updated since are read in on the engine loop's first turn, before it admits any."""
        try:
            self._read(starting=True)
        except redis.RedisError as exc:
            logger.warning("engine controls at start-up: Redis error (%s); retrying", exc)

    def run(self, finished: threading.Event) -> None:
        pubsub: PubSub | None = None
        while not finished.is_set():
            try:
                if pubsub is None:  # before reading: a nudge in between is not missed
                    pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(self.channel)
                self._read(starting=False)
                self._wait_for_nudge(pubsub, finished)
            except redis.RedisError as exc:
                logger.warning("engine controls: Redis error (%s); retrying", exc)
                _closed(pubsub)
                pubsub = None
                finished.wait(self.interval)
        _closed(pubsub)

    def _wait_for_nudge(self, pubsub: PubSub, finished: threading.Event) -> None:
        """Until the API publishes a change, the poll interval ends, or the worker stops."""
        deadline = time.monotonic() + self.interval
        while not finished.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or pubsub.get_message(timeout=min(left, _STOP_CHECK)) is not None:
                return

    def _read(self, starting: bool) -> None:
        raw_sleep, reset_gen, raw_pause, raw_weights, raw_profile = self.client.mget(self.keys)
        profile = ProfileRequest.decode(raw_profile)
        profiler = self.profiler
        asked = self._profile_asked
        if profiler is not None and profile is not None and _newer(asked, profile.gen):
            # A worker started while recording joins in.
            self._profile_asked = profile.gen
            self.call_soon(profiler.task(profile, self.beat_now))
        self.sleep.want(SleepRequest.decode(raw_sleep))  # acts only on a change
        self.pause.want(PauseRequest.decode(raw_pause))
        weights = WeightUpdateRequest.decode(raw_weights)
        if weights is not None and _newer(self._weights_asked, weights.gen):
            self._weights_asked = weights.gen
            self.call_soon(self._weight_updater(weights))
        self.sleep.peers_awake = self.sleep.refuses and self._a_peer_is_awake()
        if reset_gen is not None and reset_gen != self._reset_asked:
            self._reset_asked = reset_gen
            if starting:
                self.prefix_cache_reset_gen = reset_gen
            else:
                self.call_soon(self._resetter(reset_gen))

    def _a_peer_is_awake(self) -> bool:
        """Whether another live worker of the model serves (not asleep, not draining), by
        the model's heartbeats (a SCAN: only while this worker refuses)."""
        mine = self.names.worker(self.model, self.instance)
        keys = [
            key
            for key in self.client.scan_iter(
                match=self.names.model_workers_pattern(self.model), count=500
            )
            if key != mine
        ]
        for raw in self.client.mget(keys) if keys else ():
            beat = json_object(raw)
            if (
                beat is not None
                and beat.get("model") == self.model
                and beat.get("sleeping") is False
                and not beat.get("draining")
            ):
                return True
        return False

    def _weight_updater(self, request: WeightUpdateRequest) -> Task:
        def update(engine: LLMEngine) -> None:
            error = None
            try:
                if request.path is not None:  # None: --model's, which a new worker serves
                    engine.update_weights(request.path)
            except ValueError as exc:  # a folder that is not there, or does not fit
                logger.warning("weights not updated from %s: %s", request.path, exc)
                error = str(exc)
            except Exception as exc:  # unreadable files, no memory: the call's answer
                logger.exception("weights not updated from %s", request.path)
                error = f"{type(exc).__name__}: {exc}"
            self.weights_reached = {"gen": request.gen, "path": request.path, "error": error}
            self.beat_now()

        return update

    def _resetter(self, gen: str) -> Task:
        def reset(engine: LLMEngine) -> None:
            engine.reset_prefix_cache()
            logger.info("prefix cache reset (POST /reset_prefix_cache)")
            self.prefix_cache_reset_gen = gen
            self.beat_now()

        return reset
