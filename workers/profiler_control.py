"""vLLM's POST /start_profile and /stop_profile, on one worker: a torch profiler around
the engine thread, started and stopped between two engine steps.

Only the engine thread runs model code, so the trace holds every op of the steps taken
while recording (and the CUDA kernels they launched, on a GPU). Stopping writes the trace
as `<model>.<instance>.<ms>.pt.trace.json[.gz]` into the configured folder, for
chrome://tracing or Perfetto. A start while recording and a stop while not are no-ops,
as in vLLM; what a call reached (and a failure to write) goes in the heartbeat. The
folder is checked when recording starts (a start fails at once, not a whole session
later); a stop whose trace could not be written keeps the recording for a retry; a
worker that stops while recording writes its trace on the way out.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from conveyor.profile_request import ProfileRequest
from conveyor.profiler_config import ProfilerConfig
from engine.llm_engine import LLMEngine

logger = logging.getLogger(__name__)

Task = Callable[[LLMEngine], None]


class ProfilerControl:
    def __init__(self, config: ProfilerConfig, model: str, instance: str) -> None:
        self.config = config
        self.model = model
        self.instance = instance
        self._recording: profile | None = None
        self._stopped = False  # recording ended, its trace not written yet
        # For the heartbeat: the gen reached, whether recording, the last trace written,
        # and why the call failed (None: it took effect).
        self.reached: dict[str, object] = {"gen": None, "on": False, "trace": None, "error": None}

    def task(self, request: ProfileRequest, announce: Callable[[], None]) -> Task:
        """What the engine thread runs for `request` between two steps."""

        def apply(_: LLMEngine) -> None:
            trace, error = self.reached.get("trace"), None
            try:
                if request.on:
                    self._start()
                else:
                    trace = self._stop() or trace
            except Exception as exc:  # a folder that cannot be written: the call's 500
                logger.exception("profiler %s failed", "start" if request.on else "stop")
                error = f"{type(exc).__name__}: {exc}"
            self.reached = {
                "gen": request.gen,
                "on": self._recording is not None and not self._stopped,
                "trace": trace,
                "error": error,
            }
            announce()

        return apply

    def shutdown(self) -> None:
        """The worker stops: a recording still on is written (errors logged)."""
        if self._recording is None:
            return
        try:
            self._stop()
        except Exception:
            logger.exception("the profiler's trace could not be written as the worker stopped")

    def _start(self) -> None:
        if self._recording is not None and not self._stopped:
            return
        if self._recording is not None:  # a stop that could not write: written now
            self._stop()
        folder = Path(self.config.torch_profiler_dir)
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass  # a folder traces cannot be written to fails the start, not the stop
        activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
        recording = profile(
            activities=activities,
            record_shapes=self.config.record_shapes,
            with_stack=self.config.with_stack,
            with_flops=self.config.with_flops,
            profile_memory=self.config.with_memory,
        )
        recording.start()
        self._recording = recording
        logger.info("torch profiler started (POST /start_profile)")

    def _stop(self) -> str | None:
        recording = self._recording
        if recording is None:
            return None
        if not self._stopped:
            recording.stop()
            self._stopped = True
        folder = Path(self.config.torch_profiler_dir)
        folder.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9._-]", "_", f"{self.model}.{self.instance}")
        suffix = ".pt.trace.json.gz" if self.config.use_gzip else ".pt.trace.json"
        path = folder / f"{name}.{int(time.time() * 1000)}{suffix}"
        recording.export_chrome_trace(str(path))
        self._recording, self._stopped = None, False
        logger.info("torch profiler stopped: trace written to %s", path)
        return str(path)
