"""Sleep mode in a worker: the engine loop's side of `POST /sleep` and `/wake_up`.

The sync thread (workers/engine_controls.py) hands over the model's latest
SleepRequest; the engine loop calls `converge` every turn. Once a request asks
for any part asleep, this worker refuses new requests (503 `model_sleeping`,
never queued behind a sleeping engine), lets the ones it holds finish, then
puts the engine to sleep. Waking happens at once. What was reached (or why it
failed) is announced in the heartbeat, which is how the API's call learns that
it took effect on every worker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from conveyor.protocol import ErrorInfo
from conveyor.sleep_request import SleepRequest, SleepState
from engine.llm_engine import LLMEngine

logger = logging.getLogger(__name__)


def model_sleeping(model: str) -> ErrorInfo:
    return ErrorInfo(
        message=(
            f"The model `{model}` is asleep (POST /sleep): POST /wake_up wakes it, then try again"
        ),
        code="model_sleeping",
        status=503,
    )


class SleepControl:
    def __init__(self, engine: LLMEngine, announce: Callable[[], None] = lambda: None) -> None:
        self.engine = engine
        # Asks the heartbeat to beat now (never waits): the API's call is waiting to see.
        self.announce = announce
        self._lock = threading.Lock()
        self._target: SleepRequest | None = None
        # Replaced, never mutated: the heartbeat reads it from its own thread.
        self.state = SleepState(gen=None)

    def want(self, request: SleepRequest | None) -> None:
        """Thread-safe: the state the API asks for now (None: awake, as at start)."""
        with self._lock:
            self._target = request

    @property
    def refuses(self) -> bool:
        """Whether new requests are refused: some part is asked to sleep (or still does)."""
        target = self._target
        return bool(target is not None and target.asleep) or bool(self.engine.asleep)

    def converge(self) -> bool:
        """Engine thread, between steps: act on the target once the engine can; True if
        the engine changed."""
        target = self._target
        if target is None or target.gen == self.state.gen:
            return False
        engine = self.engine
        to_wake = engine.asleep - target.asleep
        to_sleep = target.asleep - engine.asleep
        if to_sleep and engine.has_unfinished():
            return False  # the requests it holds finish first; new ones are refused
        error = None
        try:
            if to_sleep:
                engine.sleep(target.level)
                # A request to keep one part asleep (after a wake_up with tags) wakes the
                # other again; sleep always takes both.
                to_wake = engine.asleep - target.asleep
            if to_wake:
                engine.wake_up(sorted(to_wake))
        except Exception as exc:  # a failed reload, no device memory: the call's answer
            logger.exception("sleep mode: could not reach %s", sorted(target.asleep) or "awake")
            error = f"{type(exc).__name__}: {exc}"
        self.state = SleepState(target.gen, engine.asleep, engine.sleep_level, error)
        self.announce()
        return bool(to_sleep or to_wake)
