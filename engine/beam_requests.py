"""Beam-search requests inside the engine: each round scores the live beams as sub-requests.

A round turns every live beam into a one-token request for prompt + beam (greedy,
reporting its top_k log-probabilities, engine/beam_search.py): to the scheduler an
ordinary sequence, batched with everything else and preemptible like any other.
A finished sub-request keeps its KV blocks until the round is over; then each new
beam's sub-request takes over the blocks of the beam it extends (the first such
child), or shares its full blocks and gets a copy of its partial last block (the
others); either way one new token to compute, a decode. Beams no child extends give
their blocks back.
So a round costs about what a decode step of the same sequences would. Should
nothing else be schedulable while kept blocks are all that is missing, the engine
has them given back (`release_kept`) and the next round recomputes through the
prefix cache instead.

vLLM runs beam search this way on its serving side (re-prefilling each beam from
the prefix cache); here it lives in the engine, so the worker, the in-process `LLM`
and the API see one request that finishes once, with its n best hypotheses as its
choices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from engine.beam_search import Beam, BeamSearch, Hypothesis
from engine.block_manager import BlockManager
from engine.outputs import CompletionOutput, RequestOutput, RequestTimes
from engine.sampler import TokenLogprobs
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence

# Sub-request ids: the request's own, then a NUL no client-chosen id (an HTTP header or
# a generated one) can hold, so they never collide with another request's.
_SEPARATOR = "\0beam"


@dataclass(frozen=True)
class BeamOrigin:
    """What every sub-request inherits from the request: its place in the queue, its
    adapter, and the prefix-cache salt its blocks are shared under."""

    priority: int
    arrival: float
    lora: str | None
    cache_salt: str | None


@dataclass(frozen=True)
class _Step:
    """One generated token's log-probabilities, linked to the steps before it: beams
    that share a past share its steps, so a round adds one per beam, not a copy."""

    previous: _Step | None
    logprobs: TokenLogprobs

    def trail(self) -> list[TokenLogprobs]:
        steps: list[TokenLogprobs] = []
        step: _Step | None = self
        while step is not None:
            steps.append(step.logprobs)
            step = step.previous
        return steps[::-1]


@dataclass
class _Search:
    request_id: str
    prompt: list[int]
    params: SamplingParams
    search: BeamSearch
    origin: BeamOrigin
    eos_token_ids: frozenset[int]  # the end tokens that are EOS (the rest: stop_token_ids)
    # Every sub-request's: greedy, one token, the top_k log-probabilities advance needs.
    scoring: SamplingParams
    pending: dict[str, int] = field(default_factory=dict)  # sub-request id -> beam index
    # This round's sub-requests by beam index; finished ones hold their blocks.
    round: list[Sequence] = field(default_factory=list)
    scores: list[list[tuple[int, float]]] = field(default_factory=list)
    # With `logprobs` asked for: each live beam's and finished hypothesis's last step,
    # by its token ids (unique: beams are paths in one tree).
    steps: dict[tuple[int, ...], _Step] = field(default_factory=dict)
    finished_steps: dict[tuple[int, ...], _Step] = field(default_factory=dict)
    rounds: int = 0
    num_cached_tokens: int = 0
    scheduled: float | None = None


# make(sub_request_id, prompt + beam tokens, params, origin): a new sequence, not queued
Make = Callable[[str, list[int], SamplingParams, BeamOrigin], Sequence]
# text(prompt, generated token ids, params): what the request's detokenizer would release
Text = Callable[[list[int], list[int], SamplingParams], str]


class BeamRequests:
    def __init__(
        self,
        make: Make,
        queue: Callable[[Sequence], None],
        abort: Callable[[str], bool],
        text: Text,
        blocks: BlockManager,
        copy_blocks: Callable[[list[int], list[int]], None],
    ) -> None:
        self._make = make
        self._copy_blocks = copy_blocks
        self._queue = queue
        self._abort = abort
        self._blocks = blocks
        self._text = text
        self._searches: dict[str, _Search] = {}
        self._parent_of: dict[str, str] = {}

    @property
    def num_requests(self) -> int:
        return len(self._searches)

    @property
    def num_sub_requests(self) -> int:
        return len(self._parent_of)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._searches

    def start(
        self,
        request_id: str,
        prompt: list[int],
        params: SamplingParams,
        search: BeamSearch,
        origin: BeamOrigin,
        eos_token_ids: frozenset[int],
        vocab_size: int,
    ) -> None:
        state = _Search(
            request_id,
            prompt,
            params,
            search,
            origin,
            eos_token_ids,
            scoring=SamplingParams(
                temperature=0.0,
                max_tokens=1,
                ignore_eos=True,
                # The client's top_logprobs may ask for more alternatives than the search.
                logprobs=min(max(search.top_k, params.logprobs or 0), vocab_size),
            ),
        )
        self._searches[request_id] = state
        self._submit_round(state)

    def abort(self, request_id: str) -> bool:
        state = self._searches.pop(request_id, None)
        if state is None:
            return False
        for sub_id in state.pending:
            del self._parent_of[sub_id]
            self._abort(sub_id)
        self._free_round(state)
        return True

    def release_kept(self) -> bool:
        """Give back the blocks finished sub-requests keep for their round's end; True if
        any were held. The engine calls this when it could schedule nothing: a round's
        last sub-request may be waiting for exactly these blocks."""
        return any([self._free_round(state) for state in self._searches.values()])

    def absorb(self, outputs: list[RequestOutput], now: float) -> list[RequestOutput]:
        """The step's outputs with those of sub-requests taken out, and a finished output
        for each search that ended this step."""
        passed: list[RequestOutput] = []
        for out in outputs:
            parent = self._parent_of.get(out.request_id)
            if parent is None:
                passed.append(out)
            elif out.finished:  # a sub-request finishes with the one token it samples
                del self._parent_of[out.request_id]
                done = self._score(self._searches[parent], out, now)
                if done is not None:
                    passed.append(done)
        return passed

    def _submit_round(self, state: _Search) -> None:
        parents = state.round
        state.round = []
        state.scores = [[] for _ in state.search.beams]
        for index, beam in enumerate(state.search.beams):
            sub_id = f"{state.request_id}{_SEPARATOR}{state.rounds}.{index}"
            tokens = [*state.prompt, *beam.token_ids]
            seq = self._make(sub_id, tokens, state.scoring, state.origin)
            seq.keeps_blocks = True
            state.round.append(seq)
            state.pending[sub_id] = index
            self._parent_of[sub_id] = state.request_id
        self._inherit_blocks(parents, state)
        for seq in state.round:
            self._queue(seq)
        state.rounds += 1

    def _inherit_blocks(self, parents: list[Sequence], state: _Search) -> None:
        """Each new beam's sequence starts from the KV of the beam it extends: the first
        child takes the parent's blocks over, later ones share its full blocks; parents
        nobody extends give theirs back."""
        children: dict[int, list[Sequence]] = {}
        for beam, seq in zip(state.search.beams, state.round, strict=True):
            if beam.parent >= 0:
                children.setdefault(beam.parent, []).append(seq)
        sources: list[int] = []
        targets: list[int] = []
        for index, (first, *others) in children.items():
            parent = parents[index]
            if not parent.block_table:
                continue  # given back (release_kept): the prefix cache may still help
            for other in others:
                computed, copy = self._blocks.fork_copying_tail(
                    parent, other, parent.num_computed_tokens
                )
                other.num_computed_tokens = computed
                if copy is not None:
                    sources.append(copy[0])
                    targets.append(copy[1])
            self._blocks.hand_over(parent, first)
            first.num_computed_tokens = parent.num_computed_tokens
        self._copy_blocks(sources, targets)
        for parent in parents:
            self._blocks.free(parent)

    def _free_round(self, state: _Search) -> bool:
        """Give back the blocks the round's finished sub-requests keep; True if any did."""
        held = False
        for seq in state.round:
            if seq.is_finished and seq.block_table:
                self._blocks.free(seq)
                held = True
        return held

    def _score(self, state: _Search, out: RequestOutput, now: float) -> RequestOutput | None:
        index = state.pending.pop(out.request_id)
        if state.rounds == 1:
            state.num_cached_tokens = out.num_cached_tokens
            state.scheduled = out.times.scheduled
        logprobs = out.outputs[0].logprobs
        assert logprobs, "a beam's sub-request reports its top log-probabilities"
        state.scores[index] = list(logprobs[0].top)
        if state.pending:
            return None
        parents = state.search.beams
        top_k = state.search.top_k
        state.search.advance([scores[:top_k] for scores in state.scores])
        if state.params.logprobs is not None:
            self._record_steps(state, parents)
        if not state.search.done:
            self._submit_round(state)
            return None
        del self._searches[state.request_id]
        self._free_round(state)
        return self._finished(state, now)

    def _record_steps(self, state: _Search, parents: list[Beam]) -> None:
        """The step each new beam and newly finished hypothesis took: its token's
        log-probability and rank among its parent's scores, and the client's top
        alternatives from them, as a sampled token's are reported."""
        index_of = {beam.token_ids: index for index, beam in enumerate(parents)}
        top_n = state.params.logprobs or 0

        def step(tokens: tuple[int, ...]) -> _Step:
            parent = tokens[:-1]
            scores = state.scores[index_of[parent]]
            rank = next(i for i, (token, _) in enumerate(scores) if token == tokens[-1])
            logprobs = TokenLogprobs(tokens[-1], scores[rank][1], rank + 1, tuple(scores[:top_n]))
            return _Step(state.steps.get(parent), logprobs)

        state.finished_steps = {
            h.token_ids: state.finished_steps.get(h.token_ids) or step(h.token_ids)
            for h in state.search.finished
        }
        state.steps = {beam.token_ids: step(beam.token_ids) for beam in state.search.beams}

    def _finished(self, state: _Search, now: float) -> RequestOutput:
        choices = [
            self._choice(state, index, hypothesis)
            for index, hypothesis in enumerate(state.search.results()[: state.params.n])
        ]
        return RequestOutput(
            request_id=state.request_id,
            outputs=choices,
            finished=True,
            num_prompt_tokens=len(state.prompt),
            num_cached_tokens=state.num_cached_tokens,
            prompt_logprobs=None,
            # The client's first token comes with the last: beam search streams nothing
            # before the search is over.
            times=RequestTimes(
                arrival=state.origin.arrival,
                scheduled=state.scheduled,
                first_token=now,
                finished=now,
            ),
        )

    def _choice(self, state: _Search, index: int, hypothesis: Hypothesis) -> CompletionOutput:
        tokens = list(hypothesis.token_ids)
        end = hypothesis.end_token
        # As in a sampled answer: an end token's text is not part of the output.
        text = self._text(state.prompt, tokens if end is None else tokens[:-1], state.params)
        steps = state.finished_steps.get(hypothesis.token_ids)
        return CompletionOutput(
            index=index,
            text=text,
            token_ids=tokens,
            logprobs=steps.trail() if steps is not None else None,
            finish_reason="length" if end is None else "stop",
            stop_reason=None if end is None or end in state.eos_token_ids else end,
            num_output_tokens=len(tokens),
        )
