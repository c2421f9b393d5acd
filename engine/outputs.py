"""Plain message structs the engine hands out, one per request per step.

They carry only deltas (new token ids, new text, new logprobs) so a worker
can forward them over the wire as they are, like vLLM v1's EngineCoreOutput.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.sampler import TokenLogprobs


@dataclass(frozen=True)
class CompletionOutput:
    """What one choice produced this step."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprobs] | None
    finish_reason: str | None
    stop_reason: str | int | None
    num_output_tokens: int

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True)
class RequestTimes:
    """Wall-clock milestones (time.time()) for latency metrics."""

    arrival: float
    scheduled: float | None
    first_token: float | None
    finished: float | None


@dataclass(frozen=True)
class RequestOutput:
    """A request's progress in one step: the choices that changed, and whether it is done."""

    request_id: str
    outputs: list[CompletionOutput]
    finished: bool
    num_prompt_tokens: int
    num_cached_tokens: int
    prompt_logprobs: list[TokenLogprobs | None] | None
    times: RequestTimes
    # An embedding request's vector (1-D float32, on the CPU), in its finished output.
    embedding: torch.Tensor | None = None
