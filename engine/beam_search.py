"""Beam search, step by step: HF transformers' algorithm over scores the engine computes.

HF `generate(num_beams=k, do_sample=False)` is the oracle here as greedy decoding's is
elsewhere, so this follows its rules exactly, not vLLM's variant (whose length penalty
counts the prompt's tokens and which always runs to max_tokens):

- each step keeps the K = max(2, 1 + number of end tokens) * k best continuations of all
  live beams by cumulative log-probability (enough that k of them go on even if every
  beam's best next token ends it);
- a continuation that ends (an end token, or the length limit) among the best k of the K
  becomes a finished hypothesis scored `logprob / generated_length ** length_penalty`,
  its end token counted; the k best finished are kept;
- the k best continuations that do not end are the next step's beams;
- the search stops once k hypotheses are finished and the best live beam, scored at its
  current length, can no longer beat the worst of them (HF's default, early_stopping
  False), or when every continuation ended.

The class knows nothing of models: the engine asks for `top_k` log-probabilities after
each live beam's tokens and hands them to `advance` (engine/beam_requests.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Hypothesis:
    """A finished beam: its generated tokens (the end token included) and HF's score."""

    token_ids: tuple[int, ...]
    logprob: float  # cumulative log-probability of token_ids
    score: float  # logprob / len(token_ids) ** length_penalty
    end_token: int | None  # the end token that finished it; None: the length limit did


@dataclass(frozen=True)
class Beam:
    """A live beam: the tokens generated so far, their cumulative log-probability, and
    the index of the beam it extends among the previous step's (-1: the prompt)."""

    token_ids: tuple[int, ...]
    logprob: float
    parent: int = -1


class BeamSearch:
    def __init__(
        self,
        width: int,
        max_new_tokens: int,
        end_token_ids: frozenset[int],
        length_penalty: float = 1.0,
        min_new_tokens: int = 0,
    ) -> None:
        if width < 1 or max_new_tokens < 1:
            raise ValueError("beam search needs a width and max_new_tokens of at least 1")
        self.width = width
        self.max_new_tokens = max_new_tokens
        self.end_token_ids = end_token_ids
        self.length_penalty = length_penalty
        self.min_new_tokens = min_new_tokens
        self.num_candidates = max(2, 1 + len(end_token_ids)) * width
        self.beams: list[Beam] = [Beam((), 0.0)]
        self.finished: list[Hypothesis] = []
        self.done = False
        self._can_improve = True

    @property
    def top_k(self) -> int:
        """How many of each beam's most likely next tokens `advance` needs: K, plus the
        end tokens that min_new_tokens may bar from them."""
        barred = len(self.end_token_ids) if self.min_new_tokens else 0
        return self.num_candidates + barred

    def advance(self, next_logprobs: Sequence[Sequence[tuple[int, float]]]) -> None:
        """One step: `next_logprobs[i]` holds beam i's top_k (token, log-probability)
        pairs, most likely first."""
        if self.done:
            raise RuntimeError("the search is over")
        if len(next_logprobs) != len(self.beams):
            raise ValueError(f"expected scores for {len(self.beams)} beams")
        length = len(self.beams[0].token_ids) + 1  # every live beam has the same length
        ends_barred = length <= self.min_new_tokens
        candidates = [
            (beam.logprob + logprob, index, token)
            for index, (beam, pairs) in enumerate(zip(self.beams, next_logprobs, strict=True))
            for token, logprob in pairs
            if not (ends_barred and token in self.end_token_ids)
        ]
        # Best first; equal scores keep beam-major order (a stable sort).
        candidates.sort(key=lambda c: -c[0])
        candidates = candidates[: self.num_candidates]
        at_limit = length >= self.max_new_tokens
        ends = [at_limit or token in self.end_token_ids for _, _, token in candidates]
        if self._can_improve:
            normalizer = length**self.length_penalty
            best = zip(candidates[: self.width], ends[: self.width], strict=True)
            for (logprob, index, token), ended in best:
                if ended:
                    tokens = (*self.beams[index].token_ids, token)
                    end = token if token in self.end_token_ids else None
                    self.finished.append(Hypothesis(tokens, logprob, logprob / normalizer, end))
            self.finished.sort(key=lambda h: -h.score)
            del self.finished[self.width :]
        self.beams = [
            Beam((*self.beams[index].token_ids, token), logprob, index)
            for (logprob, index, token), ended in zip(candidates, ends, strict=True)
            if not ended
        ][: self.width]
        if len(self.finished) == self.width and self.beams:
            best_possible = self.beams[0].logprob / length**self.length_penalty
            self._can_improve = best_possible > self.finished[-1].score
        self.done = not self._can_improve or all(ends)

    def results(self) -> list[Hypothesis]:
        """The finished hypotheses, best first (`width` of them once the search is done)."""
        return list(self.finished)
