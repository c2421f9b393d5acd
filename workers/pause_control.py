"""Pausing in a worker: the engine loop's side of vLLM's `POST /pause` and `/resume`.

The engine-controls thread (workers/engine_controls.py) hands over the model's latest
PauseRequest; the engine loop calls `converge` every turn. From the moment a pause is
asked, this worker reads no new requests and admits none it already read: they wait
(in the model's streams, where a worker started later finds them too) and run after
`/resume`. What the engine holds is ended at once, each choice with the text it has and
finish_reason "abort" (mode abort, vLLM's default), finished first (mode wait), or
frozen where it stands, its KV blocks kept, and carried on after `/resume` (mode keep).
Once the engine holds nothing, the prefix cache is emptied if asked (new weights make
the cached KV stale). The gen reached is announced in the heartbeat, which is how the
API's call learns that it took effect on every worker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from conveyor.pause_request import KEEP, WAIT, PauseRequest
from conveyor.protocol import ErrorInfo
from engine.llm_engine import LLMEngine

logger = logging.getLogger(__name__)


def model_paused(model: str) -> ErrorInfo:
    """The answer to a running request that a pause ended without a partial answer: a
    batch line (its batch worker waits a 503 out and sends it again), a beam search, an
    embedding."""
    return ErrorInfo(
        message=(
            f"The model `{model}` was paused while this request ran (POST /pause): "
            "try again once it resumes"
        ),
        code="model_paused",
        status=503,
    )


class PauseControl:
    def __init__(self, engine: LLMEngine, announce: Callable[[], None] = lambda: None) -> None:
        self.engine = engine
        # Asks the heartbeat to beat now (never waits): the API's call is waiting to see.
        self.announce = announce
        # Replaced whole by the engine-controls thread, read by the engine loop's.
        self._target: PauseRequest | None = None
        # The gen of the request last acted on (read by the heartbeat's thread).
        self.reached: str | None = None

    def want(self, request: PauseRequest | None) -> None:
        """Thread-safe (one assignment): the state the API asks for now (None: not
        paused, as at start)."""
        self._target = request

    @property
    def holds(self) -> bool:
        """Whether new requests wait: a pause is asked (they are neither read nor admitted)."""
        target = self._target
        return target is not None and target.paused

    @property
    def freezes(self) -> bool:
        """Whether the engine takes no step: paused with mode keep."""
        target = self._target
        return target is not None and target.paused and target.mode == KEEP

    def converge(self, interrupt_all: Callable[[], None]) -> bool:
        """Engine thread, between steps: act on the target once the engine can; True once
        it did (the caller then `announce`s it). `interrupt_all` ends every request the
        engine holds with its partial answer (a pause with mode abort)."""
        target = self._target
        if target is None or target.gen == self.reached:
            return False
        engine = self.engine
        if target.paused and target.mode != KEEP:
            if engine.has_unfinished():
                if target.mode == WAIT:
                    return False  # they finish first; new ones wait
                interrupt_all()
            if target.clear_cache:
                engine.reset_prefix_cache()
        logger.info(
            "%s (gen %s)", f"paused, mode {target.mode}" if target.paused else "resumed", target.gen
        )
        self.reached = target.gen
        return True
