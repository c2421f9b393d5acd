"""One generated continuation and the bookkeeping the scheduler needs for it.

Following vLLM v1 we track `num_computed_tokens` (tokens whose KV is in the
cache) instead of prefill/decode phases: a sequence has work to do whenever
`num_computed_tokens < len(token_ids)`, whether that is a prompt chunk, the
last sampled token, or everything again after preemption.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from engine.detokenizer import IncrementalDetokenizer
from engine.sampler import TokenLogprobs
from engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from llguidance import LLMatcher

    from engine.pooling_params import PoolingParams

_seq_ids = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """One choice of one request (a request with n=3 has three)."""

    request_id: str
    index: int
    prompt_token_ids: list[int]
    params: SamplingParams
    priority: int
    arrival_time: float
    detokenizer: IncrementalDetokenizer
    generator: torch.Generator | None = None
    # Parse state of params.structured_output over this choice's output tokens (engine/grammar_*).
    grammar: LLMatcher | None = None
    # The LoRA adapter's slot in the model (engine/models/lora.py); None: the base model.
    lora_slot: int | None = None
    # Seeds the prefix-cache hash chain: KV computed under one adapter is another
    # adapter's (or the base model's) cache miss, even for the same tokens.
    cache_root: int | None = None
    # An embedding request (the pooling runner): its prompt is pooled into one vector
    # and nothing is sampled. `pools_every_row`: its pooling reads every prompt row.
    pooling: PoolingParams | None = None
    pools_every_row: bool = False
    seq_id: int = field(default_factory=lambda: next(_seq_ids))
    token_ids: list[int] = field(init=False)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)
    # Leading block-table entries given back because every layer's window has passed
    # them (engine/block_manager.py, release_behind_window).
    num_released_blocks: int = 0
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    num_preemptions: int = 0
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    # Prompt logprobs computed so far, by position (row p scores token p + 1):
    # keyed so a chunk recomputed after preemption overwrites instead of appending.
    prompt_logprob_rows: dict[int, TokenLogprobs] = field(default_factory=dict)
    first_token_time: float | None = None
    scheduled_time: float | None = None
    # Speculative tokens proposed for the next step (engine/ngram_proposer.py): verified
    # in one forward pass with the last token, never part of token_ids until accepted.
    draft_token_ids: list[int] = field(default_factory=list)
    # Steps in a row whose drafts were all rejected, and the output length before which
    # no more are proposed (the engine backs off where lookup keeps guessing wrong).
    spec_misses: int = 0
    spec_resume_at: int = 0
    # What engine/pooler.py has folded so far (a MEAN sum, or the CLS row).
    pooled: torch.Tensor | None = None
    # A beam search's scoring sub-request (engine/beam_requests.py): finishing keeps its
    # KV blocks, for the next step's beams to extend instead of computing them again.
    keeps_blocks: bool = False

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def wants_prompt_logprobs(self) -> bool:
        """Prompt logprobs belong to the request: only its first choice computes them."""
        return (
            self.index == 0
            and self.params.prompt_logprobs is not None
            and self.prompt_logprobs is None
        )

    @property
    def needs_every_prompt_row(self) -> bool:
        """Whether the prompt must be computed whole: a prefix-cache hit skips rows."""
        return self.wants_prompt_logprobs or self.pools_every_row

    def sort_key(self) -> tuple[int, float, int]:
        """Scheduling order: lower priority value first, then older, then by id."""
        return (self.priority, self.arrival_time, self.seq_id)
