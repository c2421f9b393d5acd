"""Sleep mode in a worker: the engine loop's side of `POST /sleep` and `/wake_up`.

The sync thread (workers/engine_controls.py) hands over the model's latest
SleepRequest; the engine loop calls `converge` every turn. Once a request asks
for any part asleep, this worker refuses new requests (503 `model_sleeping`,
never queued behind a sleeping engine; while another worker of the model is
awake it reads none, leaving them to that one), ends the ones it holds with
that error (vLLM's mode abort, the default) or lets them finish (mode wait),
then puts the engine to sleep. Waking happens at once. What was reached (or why it
failed) is announced in the heartbeat, which is how the API's call learns that
it took effect on every worker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from conveyor.protocol import ErrorInfo
from conveyor.sleep_request import WEIGHTS, SleepRequest, SleepState
from engine.llm_engine import LLMEngine

logger = logging.getLogger(__name__)


def model_sleeping(model: str, running: bool = False) -> ErrorInfo:
    """The answer to a request this worker will not run: it came while the model sleeps,
    or (`running`) it was ended by a sleep asked with mode abort."""
    what = "was put to sleep while this request ran" if running else "is asleep"
    return ErrorInfo(
        message=f"The model `{model}` {what} (POST /sleep): POST /wake_up wakes it, then try again",
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
        # Whether another worker of the model is awake (the engine-controls thread looks):
        # then this one, while refusing, reads no requests and leaves them to it.
        self.peers_awake = False

    def want(self, request: SleepRequest | None) -> None:
        """Thread-safe: the state the API asks for now (None: awake, as at start). The
        heartbeat says at once whether this worker now refuses: peers read it to decide
        whether to leave requests to it."""
        with self._lock:
            changed = request != self._target
            self._target = request
        if changed:
            self.announce()

    @property
    def refuses(self) -> bool:
        """Whether new requests are refused: some part is asked to sleep (or still does)."""
        target = self._target
        return bool(target is not None and target.asleep) or bool(self.engine.asleep)

    @property
    def leaves_work_to_peers(self) -> bool:
        """Read nothing from the stream: refusing, while another worker serves."""
        return self.refuses and self.peers_awake

    def converge(self, end_requests: Callable[[], None], frozen: bool = False) -> bool:
        """Engine thread, between steps: act on the target once the engine can; True once
        it did (the caller samples the engine's state, then `announce`s it). `end_requests`
        ends every request the engine holds with an error (a sleep with mode abort, and
        mode wait while a pause with mode keep freezes them: they would never finish)."""
        target = self._target
        if target is None or target.gen == self.state.gen:
            return False
        engine = self.engine
        to_wake = engine.asleep - target.asleep
        # Also asleep already, but shallower than asked (level 1, then level 2).
        deeper = (
            WEIGHTS in (target.asleep & engine.asleep) and (engine.sleep_level or 0) < target.level
        )
        to_sleep = target.asleep - engine.asleep or ({WEIGHTS} if deeper else set())
        if to_sleep and engine.has_unfinished():
            if target.mode != "abort" and not frozen:
                return False  # mode wait: they finish first; new ones are refused
            end_requests()
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
        return True
