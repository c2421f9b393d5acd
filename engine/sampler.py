"""Turn one step's logits into next tokens, with vLLM's sampling semantics.

One `Sampler` call covers every sequence that samples this step. Each
processing stage is a single batched tensor op over just the rows that need
it and is skipped when none do, because this runs every engine step over a
~49k vocabulary. Seeded rows draw their noise only from their own generator,
with a shape that depends on the row alone, so a seeded request samples the
same tokens whatever it is batched with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine.sampling_params import SamplingParams

_NEG_INF = float("-inf")
# Prompt logprobs can cover thousands of positions; log_softmax over a
# [positions, vocab] block at once would briefly need gigabytes.
_PROMPT_LOGPROBS_CHUNK = 512


@dataclass(frozen=True)
class TokenLogprobs:
    """Logprob of the chosen token plus the top alternatives, from the model's raw distribution."""

    token_id: int
    logprob: float
    rank: int  # 1-based rank of token_id in the raw distribution (1 = most likely)
    top: tuple[tuple[int, float], ...]  # (token_id, logprob), logprob descending; len = k


@dataclass
class SamplingBatch:
    """One row per sequence that samples a token this step, in logits row order."""

    params: list[SamplingParams]
    prompt_token_ids: list[Sequence[int]]  # repetition_penalty covers prompt + output, like vLLM
    output_token_ids: list[Sequence[int]]  # generated so far: penalties and min_tokens
    generators: list[torch.Generator | None]  # per-request seeded generator, or None: default RNG
    # Masked with params.stop_token_ids while len(output) < params.min_tokens;
    # not masked for ignore_eos rows, where EOS is an ordinary token (as in vLLM).
    eos_token_ids: frozenset[int]


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]  # None for rows whose params.logprobs is None


class Sampler:
    """Stateless; a class so the model runner can hold one and tests can swap it."""

    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        params = batch.params
        n = logits.shape[0]
        if not len(params) == len(batch.generators) == len(batch.output_token_ids) == n:
            raise ValueError(f"SamplingBatch rows do not match {n} logits rows")
        logits = logits.float()  # no copy when already float32; never modified below
        processed = process_logits(logits, batch)

        greedy = [i for i, p in enumerate(params) if p.greedy]
        if len(greedy) == n:
            tokens = processed.argmax(dim=-1)
        elif not greedy:
            tokens = _exponential_race(sampling_probs(processed, params), batch.generators)
        else:
            rand = [i for i, p in enumerate(params) if not p.greedy]
            greedy_idx = torch.tensor(greedy, device=logits.device)
            rand_idx = torch.tensor(rand, device=logits.device)
            tokens = torch.empty(n, dtype=torch.long, device=logits.device)
            tokens[greedy_idx] = processed[greedy_idx].argmax(dim=-1)
            probs = sampling_probs(processed[rand_idx], [params[i] for i in rand])
            tokens[rand_idx] = _exponential_race(probs, [batch.generators[i] for i in rand])

        token_ids: list[int] = tokens.tolist()
        return SamplerOutput(
            token_ids=token_ids, logprobs=_sample_logprobs(logits, token_ids, params)
        )


def prompt_logprobs(
    logits: torch.Tensor, next_token_ids: Sequence[int], k: int
) -> list[TokenLogprobs]:
    """logits[i] predicts next_token_ids[i]; returns one TokenLogprobs per row (raw log_softmax)."""
    if logits.shape[0] != len(next_token_ids):
        raise ValueError(f"{logits.shape[0]} logits rows for {len(next_token_ids)} tokens")
    out: list[TokenLogprobs] = []
    for start in range(0, len(next_token_ids), _PROMPT_LOGPROBS_CHUNK):
        stop = start + _PROMPT_LOGPROBS_CHUNK
        tokens = next_token_ids[start:stop]
        out.extend(_token_logprobs(logits[start:stop], tokens, [k] * len(tokens)))
    return out


def process_logits(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Apply logit_bias, min_tokens masking and penalties, in vLLM's order.

    Returns `logits` itself when no row needs any of them (the common case),
    otherwise a modified copy; the caller's tensor is never written.
    """
    bias_rows: list[int] = []
    bias_tokens: list[int] = []
    bias_values: list[float] = []
    mask_rows: list[int] = []
    mask_tokens: list[int] = []
    penalty_rows: list[int] = []
    for i, p in enumerate(batch.params):
        if p.logit_bias:
            bias_rows.extend([i] * len(p.logit_bias))
            bias_tokens.extend(p.logit_bias.keys())
            bias_values.extend(p.logit_bias.values())
        if len(batch.output_token_ids[i]) < p.min_tokens:
            stops = set(p.stop_token_ids)
            if not p.ignore_eos:
                stops |= batch.eos_token_ids
            mask_rows.extend([i] * len(stops))
            mask_tokens.extend(stops)
        if p.needs_penalties:
            penalty_rows.append(i)
    if not (bias_rows or mask_rows or penalty_rows):
        return logits

    out = logits.clone()
    device = out.device
    if bias_rows:
        # Keys of one dict never repeat, so accumulate only matters for safety.
        out.index_put_(
            (torch.tensor(bias_rows, device=device), torch.tensor(bias_tokens, device=device)),
            torch.tensor(bias_values, dtype=out.dtype, device=device),
            accumulate=True,
        )
    if mask_rows:
        out[torch.tensor(mask_rows, device=device), torch.tensor(mask_tokens, device=device)] = (
            _NEG_INF
        )
    if penalty_rows:
        _apply_penalties(out, penalty_rows, batch)
    return out


def sampling_probs(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Temperature, top-k, top-p, min-p, then softmax, for random (non-greedy) rows.

    Returns a fresh [rows, vocab] probability tensor whose zeros are exactly
    the tokens that can never be sampled; exposed so tests can check masks.
    """
    n, vocab = logits.shape
    device = logits.device
    temps = torch.tensor([p.temperature for p in params], dtype=logits.dtype, device=device)
    x = logits / temps[:, None]

    k_rows = [i for i, p in enumerate(params) if 0 < p.top_k < vocab]
    p_rows = [i for i, p in enumerate(params) if p.top_p < 1.0]
    if p_rows:
        _top_k_top_p(x, sorted(set(k_rows) | set(p_rows)), params)
    elif k_rows:
        _top_k(x, k_rows, params)

    min_p_rows = [i for i, p in enumerate(params) if p.min_p > 0.0]
    if min_p_rows:
        idx = _row_index(min_p_rows, n, device)
        sub = _take(x, idx)
        probs = sub.softmax(dim=-1)
        min_p = torch.tensor([params[i].min_p for i in min_p_rows], device=device)
        threshold = probs.amax(dim=-1, keepdim=True) * min_p[:, None]
        _put(x, idx, sub.masked_fill(probs < threshold, _NEG_INF))
    return x.softmax(dim=-1)


def _apply_penalties(out: torch.Tensor, rows: list[int], batch: SamplingBatch) -> None:
    """Repetition (prompt + output), then frequency and presence (output only), in place."""
    n, vocab = out.shape
    device = out.device
    params = [batch.params[i] for i in rows]
    idx = _row_index(rows, n, device)
    x = _take(out, idx)
    counts = _token_counts([batch.output_token_ids[i] for i in rows], vocab, device)

    if any(p.repetition_penalty != 1.0 for p in params):
        prompts = [
            batch.prompt_token_ids[i] if p.repetition_penalty != 1.0 else ()
            for i, p in zip(rows, params, strict=True)
        ]
        seen = (counts > 0) | (_token_counts(prompts, vocab, device) > 0)
        rep = torch.tensor([p.repetition_penalty for p in params], device=device)[:, None]
        x = torch.where(seen, torch.where(x > 0, x / rep, x * rep), x)

    if any(p.frequency_penalty != 0.0 or p.presence_penalty != 0.0 for p in params):
        freq = torch.tensor([p.frequency_penalty for p in params], device=device)[:, None]
        pres = torch.tensor([p.presence_penalty for p in params], device=device)[:, None]
        x = x - freq * counts - pres * (counts > 0).to(x.dtype)
    _put(out, idx, x)


def _token_counts(seqs: Sequence[Sequence[int]], vocab: int, device: torch.device) -> torch.Tensor:
    """[len(seqs), vocab] float occurrence counts, built with one scatter_add."""
    max_len = max((len(s) for s in seqs), default=0)
    counts = torch.zeros(len(seqs), vocab + 1, device=device)  # last column absorbs padding
    if max_len == 0:
        return counts[:, :vocab]
    ids = torch.full((len(seqs), max_len), vocab, dtype=torch.long)
    for r, s in enumerate(seqs):
        if len(s):
            ids[r, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    ids = ids.to(device)
    counts.scatter_add_(1, ids, torch.ones(ids.shape, device=device))
    return counts[:, :vocab]


def _top_k(x: torch.Tensor, rows: list[int], params: Sequence[SamplingParams]) -> None:
    """Top-k without a full sort: keep logits >= each row's k-th largest (ties kept)."""
    idx = _row_index(rows, x.shape[0], x.device)
    sub = _take(x, idx)
    ks = [params[i].top_k for i in rows]
    k = torch.tensor(ks, device=x.device)
    kth = sub.topk(max(ks), dim=-1).values.gather(1, (k - 1)[:, None])
    _put(x, idx, sub.masked_fill(sub < kth, _NEG_INF))


def _top_k_top_p(x: torch.Tensor, rows: list[int], params: Sequence[SamplingParams]) -> None:
    """One descending sort of just these rows serves both top-k and top-p (over the top-k set)."""
    n, vocab = x.shape
    device = x.device
    idx = _row_index(rows, n, device)
    sub = _take(x, idx)
    vals, order = sub.sort(dim=-1, descending=True, stable=True)

    k = torch.tensor(
        [params[i].top_k if 0 < params[i].top_k < vocab else vocab for i in rows], device=device
    )
    # Threshold on the k-th value (not position) so ties match `_top_k` and a
    # row's result does not depend on which path its batch took.
    kth = vals.gather(1, (k - 1)[:, None])
    vals = vals.masked_fill(vals < kth, _NEG_INF)

    probs = vals.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of all strictly earlier tokens
    # top_p == 1 must keep everything, even where float cumsum reaches 1 early.
    top_p = torch.tensor(
        [params[i].top_p if params[i].top_p < 1.0 else float("inf") for i in rows], device=device
    )
    vals = vals.masked_fill(mass_before >= top_p[:, None], _NEG_INF)
    _put(x, idx, torch.empty_like(vals).scatter_(1, order, vals))


def _exponential_race(
    probs: torch.Tensor, generators: Sequence[torch.Generator | None]
) -> torch.Tensor:
    """Sample argmax(probs / q), q ~ Exp(1): a categorical draw (vLLM's trick); consumes `probs`.

    A seeded row draws exactly one [vocab] vector from its own generator, so
    its stream does not depend on batch size or position.
    """
    n, vocab = probs.shape
    q = torch.empty_like(probs)
    seeded = [i for i, g in enumerate(generators) if g is not None]
    if not seeded:
        q.exponential_()
    elif len(seeded) < n:
        unseeded = torch.tensor(
            [i for i, g in enumerate(generators) if g is None], device=probs.device
        )
        q[unseeded] = torch.empty(len(unseeded), vocab, device=probs.device).exponential_()
    for i in seeded:
        q[i].exponential_(generator=generators[i])
    # q == 0 would turn masked tokens (prob 0) into 0/0 = NaN, which argmax picks.
    q.clamp_min_(torch.finfo(q.dtype).tiny)
    return probs.div_(q).argmax(dim=-1)


def _sample_logprobs(
    logits: torch.Tensor, token_ids: list[int], params: Sequence[SamplingParams]
) -> list[TokenLogprobs | None]:
    """Raw-distribution logprobs for just the rows that asked."""
    rows = [i for i, p in enumerate(params) if p.logprobs is not None]
    result: list[TokenLogprobs | None] = [None] * len(params)
    if not rows:
        return result
    idx = _row_index(rows, logits.shape[0], logits.device)
    computed = _token_logprobs(
        _take(logits, idx),
        [token_ids[i] for i in rows],
        [params[i].logprobs or 0 for i in rows],
    )
    for i, lp in zip(rows, computed, strict=True):
        result[i] = lp
    return result


def _token_logprobs(
    logits: torch.Tensor, token_ids: Sequence[int], ks: Sequence[int]
) -> list[TokenLogprobs]:
    """log_softmax once, then the chosen token's logprob and rank and a shared top-k."""
    if not token_ids:
        return []
    lp = torch.log_softmax(logits.float(), dim=-1)
    tokens = torch.as_tensor(token_ids, dtype=torch.long, device=lp.device)[:, None]
    chosen = lp.gather(1, tokens)
    ranks = ((lp > chosen).sum(dim=-1) + 1).tolist()
    k_max = min(max(ks), lp.shape[-1])
    top_ids: list[list[int]] = [[] for _ in ks]
    top_vals: list[list[float]] = [[] for _ in ks]
    if k_max > 0:
        values, indices = lp.topk(k_max, dim=-1)
        top_ids, top_vals = indices.tolist(), values.tolist()
    return [
        TokenLogprobs(
            token_id=int(t),
            logprob=c,
            rank=r,
            top=tuple(zip(ids[:k], vals[:k], strict=True)),
        )
        for t, c, r, ids, vals, k in zip(
            token_ids, chosen.squeeze(1).tolist(), ranks, top_ids, top_vals, ks, strict=True
        )
    ]


def _row_index(rows: list[int], n: int, device: torch.device) -> torch.Tensor | None:
    """Index tensor for `rows`, or None when they are all n rows (no gather/scatter needed)."""
    return None if len(rows) == n else torch.tensor(rows, device=device)


def _take(x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    return x if idx is None else x[idx]


def _put(x: torch.Tensor, idx: torch.Tensor | None, value: torch.Tensor) -> None:
    if idx is None:
        if value is not x:
            x.copy_(value)
    else:
        x[idx] = value
