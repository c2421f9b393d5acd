"""Turn one step's logits into next tokens, with vLLM's sampling semantics.

One `Sampler` call covers every sequence that samples this step. Each
processing stage is a single batched tensor op over just the rows that need
it and is skipped when none do, because this runs every engine step over a
~49k vocabulary. Random rows are sampled by inverse CDF from one uniform
number per row. A seeded row instead races exponential noise from its own
generator (vLLM's method), which no batch's rounding of the logits can sway, so
a seeded request samples the same tokens whatever it is batched with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from engine.bad_words import banned_tokens
from engine.grammar_mask import apply_bitmask_
from engine.sampling_params import LOGPROBS_MODES, SamplingParams

_NEG_INF = float("-inf")
# Prompt logprobs can cover thousands of positions; log_softmax over a
# [positions, vocab] block at once would briefly need gigabytes.
_PROMPT_LOGPROBS_CHUNK = 512
# Top-p sorts only each row's largest weights, trying these many before a full
# sort; typical nuclei are far smaller than the first size.
_TOP_P_CANDIDATES = (1024, 8192)
# Inverse CDF walks per-block sums first, then cumsums one block of the row in
# float64, instead of a float64 cumsum over the whole [rows, vocab] block.
_CDF_BLOCK = 256


@dataclass(frozen=True)
class TokenLogprobs:
    """Logprob of the chosen token plus the top alternatives, in the sampler's
    --logprobs-mode (by default the model's raw distribution)."""

    token_id: int
    logprob: float
    rank: int  # 1-based rank of token_id among the reported values (1 = most likely)
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
    # Rows under a structured-output constraint, and their allowed-token bitmasks
    # ([len(grammar_rows), words] int32, see engine/grammar_mask.py), on the logits' device.
    grammar_rows: list[int] = field(default_factory=list)
    grammar_bitmask: torch.Tensor | None = None
    # Speculative decoding: the draft token each row verifies (None: a row without one).
    # A greedy row needs no help (the runner compares drafts with its argmax); a random
    # row accepts its draft with the draft's probability, else samples from the rest.
    draft_tokens: list[int | None] | None = None


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]  # None for rows whose params.logprobs is None


class Sampler:
    """A class so the model runner can hold one and tests can swap it.

    Its state is the --logprobs-mode and a scratch buffer for the random rows'
    [rows, vocab] work tensor, kept between steps: a fresh one would be this
    large every step, and on CPU big allocations come back from the OS as new
    pages to fault in.
    """

    def __init__(self, logprobs_mode: str = "raw_logprobs") -> None:
        if logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(
                f"logprobs_mode must be one of {list(LOGPROBS_MODES)}, got {logprobs_mode!r}"
            )
        self.logprobs_mode = logprobs_mode
        self._scratch: torch.Tensor | None = None

    @property
    def reports_logits(self) -> bool:
        return self.logprobs_mode.endswith("_logits")

    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        params = batch.params
        n = logits.shape[0]
        if not len(params) == len(batch.generators) == len(batch.output_token_ids) == n:
            raise ValueError(f"SamplingBatch rows do not match {n} logits rows")
        logits = logits.float()  # no copy when already float32; never modified below
        processed = process_logits(logits, batch)
        lp_rows = [i for i, p in enumerate(params) if p.logprobs is not None]
        reported: torch.Tensor | None = None  # processed values of lp_rows, when reported
        if lp_rows and self.logprobs_mode.startswith("processed"):
            # A copy: the weights below may be computed in `processed` itself.
            reported = processed[torch.tensor(lp_rows, device=logits.device)]

        greedy = [i for i, p in enumerate(params) if p.greedy]
        if len(greedy) == n:
            tokens = _greedy(processed)
        elif not greedy:
            # processed is a private copy, to work in, unless no row needed processing.
            out = processed if processed is not logits else self._work(processed, n)
            weights = _sampling_weights(processed, params, out=out)
            tokens = _draw(weights, batch.generators, batch.draft_tokens)
        else:
            rand = [i for i, p in enumerate(params) if not p.greedy]
            greedy_idx = torch.tensor(greedy, device=logits.device)
            rand_idx = torch.tensor(rand, device=logits.device)
            tokens = torch.empty(n, dtype=torch.long, device=logits.device)
            tokens[greedy_idx] = _greedy(processed[greedy_idx])
            x = torch.index_select(processed, 0, rand_idx, out=self._work(processed, len(rand)))
            weights = _sampling_weights(x, [params[i] for i in rand], out=x)
            drafts = batch.draft_tokens
            tokens[rand_idx] = _draw(
                weights,
                [batch.generators[i] for i in rand],
                [drafts[i] for i in rand] if drafts is not None else None,
            )

        token_ids: list[int] = tokens.tolist()
        if reported is not None and len(greedy) < n:
            _as_sampled(reported, lp_rows, params, token_ids)
        values = reported
        if values is None and lp_rows:
            values = _take(logits, _row_index(lp_rows, n, logits.device))
        result: list[TokenLogprobs | None] = [None] * n
        if values is not None:
            computed = _token_logprobs(
                values,
                [token_ids[i] for i in lp_rows],
                [params[i].logprobs or 0 for i in lp_rows],
                normalize=not self.reports_logits,
            )
            for i, lp in zip(lp_rows, computed, strict=True):
                result[i] = lp
        return SamplerOutput(token_ids=token_ids, logprobs=result)

    def _work(self, like: torch.Tensor, rows: int) -> torch.Tensor:
        """An uninitialised [rows, vocab] view of the scratch buffer, grown as needed."""
        size = rows * like.shape[1]
        scratch = self._scratch
        if (
            scratch is None
            or scratch.numel() < size
            or scratch.dtype != like.dtype
            or scratch.device != like.device
        ):
            scratch = self._scratch = torch.empty(size, dtype=like.dtype, device=like.device)
        return scratch[:size].view(rows, like.shape[1])


def _as_sampled(
    reported: torch.Tensor,
    lp_rows: Sequence[int],
    params: Sequence[SamplingParams],
    token_ids: Sequence[int],
) -> None:
    """Turn the sampled rows of `reported` (processed logits of `lp_rows`) into what was
    sampled from, in place: divided by the temperature, and -inf where top-k, top-p or
    min-p removed the token. The masks come from the same weights computed again in
    float64, where no token this side of ~745 nats below the top one underflows to a
    zero weight (float32's would from ~104: a tempered row's whole tail). Greedy rows
    stay as they are."""
    mine = [k for k, row in enumerate(lp_rows) if not params[row].greedy]
    if not mine:
        return
    device = reported.device
    idx = torch.tensor(mine, device=device)
    rows = [params[lp_rows[k]] for k in mine]
    processed = reported[idx]
    weights = _sampling_weights(processed.double(), rows)
    temps = torch.tensor([p.temperature for p in rows], dtype=processed.dtype, device=device)
    limits = torch.finfo(processed.dtype)
    finite = processed.isfinite()
    scaled = processed.div_(temps.clamp_(max=limits.max)[:, None])
    # A logit a huge penalty took to float32's edge, over a temperature below 1, went past
    # it: inf, and log_softmax's NaN. It stays at the edge (masked ones stay -inf).
    bounded = scaled.nan_to_num(posinf=limits.max, neginf=limits.min)
    scaled = torch.where(finite, bounded, scaled)
    removed = weights == 0
    # float64's cut at top-p's or min-p's edge may differ from float32's by a token;
    # the token the row did sample was never removed.
    chosen = torch.tensor([token_ids[lp_rows[k]] for k in mine], device=device)
    removed[torch.arange(len(mine), device=device), chosen] = False
    reported[idx] = scaled.masked_fill_(removed, _NEG_INF)


def _greedy(logits: torch.Tensor) -> torch.Tensor:
    """Row-wise argmax, lowest id on ties; `max(dim)` is ~2.5x faster than `argmax` on CPU."""
    return logits.max(dim=-1).indices


def prompt_logprobs(
    logits: torch.Tensor, next_token_ids: Sequence[int], k: int
) -> list[TokenLogprobs]:
    """logits[i] predicts next_token_ids[i]; returns one TokenLogprobs per row (raw
    log_softmax, whatever --logprobs-mode says, as vLLM computes them)."""
    if logits.shape[0] != len(next_token_ids):
        raise ValueError(f"{logits.shape[0]} logits rows for {len(next_token_ids)} tokens")
    out: list[TokenLogprobs] = []
    for start in range(0, len(next_token_ids), _PROMPT_LOGPROBS_CHUNK):
        stop = start + _PROMPT_LOGPROBS_CHUNK
        tokens = next_token_ids[start:stop]
        out.extend(_token_logprobs(logits[start:stop], tokens, [k] * len(tokens)))
    return out


def process_logits(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Apply structured-output masks, logit_bias, token masks and penalties.

    Returns `logits` itself when no row needs any of them (the common case),
    otherwise a modified copy; the caller's tensor is never written. Token
    masks are min_tokens' (EOS and stop ids), allowed_token_ids' and
    bad_words'. A row under a constraint gets no min_tokens masking: its
    grammar decides where the output may end, and masking the EOS it alone
    allows would leave nothing to sample. A row the other masks would leave
    with no token at all is handled in `_mask_tokens`.
    """
    grammar = set(batch.grammar_rows)
    bias_rows: list[int] = []
    bias_tokens: list[int] = []
    bias_values: list[float] = []
    mask_rows: list[int] = []
    mask_tokens: list[int] = []
    allowed_rows: list[int] = []
    emptiable: list[int] = []  # rows whose masks are the request's own choice of tokens
    penalty_rows: list[int] = []
    for i, p in enumerate(batch.params):
        if p.logit_bias:
            bias_rows.extend([i] * len(p.logit_bias))
            bias_tokens.extend(p.logit_bias.keys())
            bias_values.extend(p.logit_bias.values())
        if len(batch.output_token_ids[i]) < p.min_tokens and i not in grammar:
            stops = set(p.stop_token_ids)
            if not p.ignore_eos:
                stops |= batch.eos_token_ids
            mask_rows.extend([i] * len(stops))
            mask_tokens.extend(stops)
        if p.bad_words_token_ids:
            banned = banned_tokens(p.bad_words_token_ids, batch.output_token_ids[i])
            mask_rows.extend([i] * len(banned))
            mask_tokens.extend(banned)
            emptiable.append(i)
        if p.allowed_token_ids is not None:
            allowed_rows.append(i)
            emptiable.append(i)
        if p.needs_penalties:
            penalty_rows.append(i)
    if not (bias_rows or mask_rows or allowed_rows or penalty_rows or grammar):
        return logits

    out = logits.clone()
    device = out.device
    if grammar:
        if batch.grammar_bitmask is None:
            raise ValueError("grammar_rows without a grammar_bitmask")
        apply_bitmask_(out, batch.grammar_rows, batch.grammar_bitmask)
    if bias_rows:
        # Keys of one dict never repeat, so accumulate only matters for safety.
        out.index_put_(
            (torch.tensor(bias_rows, device=device), torch.tensor(bias_tokens, device=device)),
            torch.tensor(bias_values, dtype=out.dtype, device=device),
            accumulate=True,
        )
    if mask_rows or allowed_rows:
        _mask_tokens(out, batch.params, mask_rows, mask_tokens, allowed_rows, emptiable)
    if penalty_rows:
        _apply_penalties(out, penalty_rows, batch)
    return out


def _mask_tokens(
    out: torch.Tensor,
    params: Sequence[SamplingParams],
    mask_rows: list[int],
    mask_tokens: list[int],
    allowed_rows: list[int],
    emptiable: list[int],
) -> None:
    """Set the masked tokens and those outside allowed_token_ids to -inf, in place.

    An `emptiable` row (allowed ids, bad words) the masks would leave with no token at
    all keeps allowed_token_ids' mask without the others (bad words, min_tokens' EOS):
    allowed_token_ids = {x} with x a bad word samples x, never a token outside the set.
    A row whose allowed ids its grammar forbids cannot be (SamplingParams refuses the
    pair); one whose grammar allows only a bad word keeps its grammar. min_tokens' masks
    alone (EOS and stop ids) never empty a row.
    """
    device = out.device
    rows = sorted(set(emptiable))
    idx = torch.tensor(rows, device=device) if rows else None
    if allowed_rows:
        keep = torch.zeros(len(allowed_rows), out.shape[1], dtype=torch.bool)
        which = [k for k, r in enumerate(allowed_rows) for _ in params[r].allowed_token_ids or ()]
        ids = [t for r in allowed_rows for t in params[r].allowed_token_ids or ()]
        keep[which, ids] = True
        allowed_idx = torch.tensor(allowed_rows, device=device)
        out[allowed_idx] = out[allowed_idx].masked_fill_(~keep.to(device), _NEG_INF)
    allowed_only = out[idx] if idx is not None else None  # a copy, before the other masks
    if mask_rows:
        out[torch.tensor(mask_rows, device=device), torch.tensor(mask_tokens, device=device)] = (
            _NEG_INF
        )
    if idx is not None:
        emptied = out[idx].amax(dim=-1) == _NEG_INF
        out[idx] = torch.where(emptied[:, None], allowed_only, out[idx])


def sampling_probs(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Temperature, top-k, top-p, min-p, then softmax, for random (non-greedy) rows.

    Returns a fresh [rows, vocab] probability tensor whose zeros are exactly
    the tokens that can never be sampled; exposed so tests can check masks.
    """
    weights = _sampling_weights(logits, params)
    return weights.div_(weights.sum(dim=-1, keepdim=True))


def _sampling_weights(
    logits: torch.Tensor, params: Sequence[SamplingParams], *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """`sampling_probs` without the normalisation: exp(x - max), so each row's max is exactly 1.

    Works in `out` (which may be `logits` itself) when given, else in one fresh
    tensor, and returns it; the exponential is taken once, and top-p and
    min-p mask the weights themselves.
    """
    n, vocab = logits.shape
    device = logits.device
    temps = torch.tensor([p.temperature for p in params], dtype=logits.dtype, device=device)
    temps.clamp_(max=torch.finfo(logits.dtype).max)  # vLLM's range has no top
    # The max is taken first, then the temperature divides: a small temperature or a
    # logit a huge repetition penalty sank may go past float32's range, but (x - max) / T
    # is 0 for the row's top token whatever T is, never -inf - -inf (a NaN row that
    # sampled a masked token).
    peak = logits.amax(dim=-1, keepdim=True)
    x = torch.sub(logits, peak, out=out) if out is not None else logits - peak
    x.div_(temps[:, None])

    k_rows = [i for i, p in enumerate(params) if 0 < p.top_k < vocab]
    if k_rows:
        _top_k(x, k_rows, params)
    w = x.exp_()

    p_rows = [i for i, p in enumerate(params) if p.top_p < 1.0]
    if p_rows:
        _top_p(w, p_rows, params)

    # Masks never remove a row's most likely token, so its weight is still the
    # max, 1: "prob < min_p * max prob" is "weight < min_p".
    min_p_rows = [i for i, p in enumerate(params) if p.min_p > 0.0]
    if min_p_rows:
        min_p = torch.tensor([params[i].min_p for i in min_p_rows], device=device)[:, None]
        idx = _row_index(min_p_rows, n, device)
        if idx is None:
            w.masked_fill_(w < min_p, 0.0)
        else:
            sub = w[idx]
            w[idx] = sub.masked_fill_(sub < min_p, 0.0)
    return w


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
        limits = torch.finfo(x.dtype)
        rep = torch.tensor([p.repetition_penalty for p in params], device=device)[:, None]
        rep = rep.to(x.dtype).clamp_(max=limits.max)  # vLLM's range has no top
        penalized = torch.where(x > 0, x / rep, x * rep)
        # A tiny penalty (1e-30; 1e-300 is 0 in float32) takes a positive logit past
        # float32's range, a huge one a negative logit: +inf made inf - inf NaN in the
        # softmax (top-p cut nothing and failed the whole step), -inf masked an allowed
        # token (a row of only such tokens sampled a forbidden one). A finite logit
        # stays finite at the largest float, which keeps the limit's meaning: those
        # tokens share the row, or sink below every other; masked ones stay masked.
        finite = penalized.nan_to_num(nan=0.0, posinf=limits.max, neginf=limits.min)
        x = torch.where(seen & x.isfinite(), finite, x)

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


def _top_p(w: torch.Tensor, rows: list[int], params: Sequence[SamplingParams]) -> None:
    """Zero all but each row's nucleus, in place on the weights `w` (after top-k).

    In descending order with ties by token id, a token is kept while the mass
    of the tokens strictly before it is below top_p. Only each row's largest
    weights are sorted; a row's cut is taken from those candidates only when it
    lies strictly above the smallest candidate (so every token at or above the
    cut is a candidate) or every nonzero weight is a candidate, which makes it
    exactly the full sort's. Other rows retry with more candidates, and last
    with the full sort. The cut is then applied in place as a threshold, with
    ties at the cut split by token id.
    """
    n, vocab = w.shape
    device = w.device
    idx = _row_index(rows, n, device)
    sub = _take(w, idx)
    top_p = torch.tensor([params[i].top_p for i in rows], dtype=torch.float64, device=device)
    limit = sub.sum(dim=-1).double() * top_p  # kept while the mass before < limit
    cut = sub.new_empty(len(rows), 1)  # each row's smallest kept weight
    tie_rows: list[int] = []  # tokens equal to the cut but after it, so dropped
    tie_cols: list[torch.Tensor] = []

    pending: torch.Tensor | None = None  # rows of `sub` still to do; None = all
    for size in (*(c for c in _TOP_P_CANDIDATES if c < vocab), vocab):
        cand = _take(sub, pending)
        # Equal weights are interchangeable in the cumulative mass, so neither
        # call needs to order ties; only a tie at the cut needs token ids.
        vals, ids = cand.sort(dim=-1, descending=True) if size == vocab else cand.topk(size)
        cum = vals.cumsum(dim=-1, dtype=torch.float64)
        mass_before = torch.cat([cum.new_zeros(cum.shape[0], 1), cum[:, :-1]], dim=1)
        keep = mass_before < _take(limit, pending)[:, None]  # a prefix: mass_before never falls
        kept = keep.sum(dim=-1, keepdim=True)  # >= 1: nothing precedes the top token
        row_cut = vals.gather(1, kept - 1)
        smallest = vals[:, -1:]
        done = (row_cut > smallest) | (smallest == 0.0) | (size == vocab)
        _put(cut, pending, row_cut)
        after_cut = vals.gather(1, kept.clamp_max(size - 1))
        split = done & (kept < size) & (after_cut == row_cut) & (row_cut > 0.0)
        for r in split.nonzero()[:, 0].tolist():  # rare: the cut splits a run of ties
            tied = vals[r] == row_cut[r]
            n_kept = int(tied[: int(kept[r])].sum())
            tie_rows.append(r if pending is None else int(pending[r]))
            tie_cols.append(ids[r][tied].sort().values[n_kept:])
        if bool(done.all()):
            break
        pending = _compose(pending, (~done).squeeze(1).nonzero().squeeze(1))

    sub.masked_fill_(sub < cut, 0.0)
    for r, cols in zip(tie_rows, tie_cols, strict=True):
        sub[r, cols] = 0.0
    _put(w, idx, sub)


def _draw(
    weights: torch.Tensor,
    generators: Sequence[torch.Generator | None],
    drafts: Sequence[int | None] | None,
) -> torch.Tensor:
    """One token per row of sampling weights, by inverse CDF.

    A row with a draft token is speculative sampling with a one-token proposal:
    the draft is kept with its probability p(d), else the token is drawn from
    the weights without it, renormalised. Every token x then comes out with
    probability p(x), exactly as without a draft (d: p(d); x != d:
    (1 - p(d)) * p(x) / (1 - p(d))), while a likely draft is usually kept.
    """
    device = weights.device
    tokens = _sample(weights, generators)
    rows = [i for i, d in enumerate(drafts or ()) if d is not None]
    if not rows:
        return tokens
    assert drafts is not None
    idx = torch.tensor(rows, device=device)
    draft = torch.tensor([drafts[i] for i in rows], device=device)
    rest = weights[idx]  # a copy: the draft is removed from it below
    p_draft = rest.gather(1, draft[:, None]).squeeze(1).double() / rest.sum(dim=-1).double()
    accept = _uniforms([generators[i] for i in rows], device) < p_draft
    chosen = draft.clone()
    rejected = (~accept).nonzero().squeeze(1)
    if len(rejected):
        rest = rest[rejected].scatter_(1, draft[rejected][:, None], 0.0)
        chosen[rejected] = _sample(rest, [generators[rows[int(r)]] for r in rejected])
    tokens[idx] = chosen
    return tokens


def _sample(weights: torch.Tensor, generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """One token per row: unseeded rows by inverse CDF (one shared draw), seeded rows by
    an exponential race on their own generators."""
    device = weights.device
    seeded = [i for i, g in enumerate(generators) if g is not None]
    if not seeded:
        return _inverse_cdf(weights, _uniforms(generators, device))
    tokens = torch.empty(weights.shape[0], dtype=torch.long, device=device)
    tokens[torch.tensor(seeded, device=device)] = _exponential_race(weights, seeded, generators)
    unseeded = [i for i, g in enumerate(generators) if g is None]
    if unseeded:
        idx = torch.tensor(unseeded, device=device)
        tokens[idx] = _inverse_cdf(weights[idx], _uniforms([None] * len(unseeded), device))
    return tokens


def _exponential_race(
    weights: torch.Tensor, rows: Sequence[int], generators: Sequence[torch.Generator | None]
) -> torch.Tensor:
    """A token for each seeded row: argmax of w / q, q ~ Exp(1) per token from the row's
    own generator (as vLLM samples), which picks token x with probability p(x).

    Why not the inverse CDF here: a seed promises the same tokens whatever the batch,
    but batched matmuls round logits differently by ~1e-5 from one batch shape to the
    next, and the CDF's boundaries between unlikely tokens are that close together: a
    row landing among them picked another token in 4 of 18 batched runs (a user's
    test, temperature 1). Here a flip needs two tokens' w / q within rounding of each
    other, which almost never happens. The row draws a vocabulary's worth of numbers
    per step, a count that depends on the row alone.
    """
    device = weights.device
    noise = torch.empty((len(rows), weights.shape[1]), dtype=torch.float32, device=device)
    for k, row in enumerate(rows):
        noise[k].exponential_(generator=generators[row])
    # A draw of exactly 0 (possible on CPU) would make a masked token's 0 / 0 a NaN,
    # which argmax picks: never below the smallest positive float.
    noise.clamp_min_(torch.finfo(torch.float32).tiny)
    race = weights[torch.tensor(list(rows), device=device)].float().div_(noise)
    return race.argmax(dim=-1)


def _uniforms(generators: Sequence[torch.Generator | None], device: torch.device) -> torch.Tensor:
    """One float64 uniform in [0, 1) per row.

    A seeded row draws exactly one number from its own generator, so its
    stream does not depend on batch size or position; the rest share one draw
    from the default generator.
    """
    n = len(generators)
    seeded = [i for i, g in enumerate(generators) if g is not None]
    if not seeded:
        return torch.rand(n, dtype=torch.float64, device=device)
    u = torch.empty(n, dtype=torch.float64, device=device)
    if len(seeded) < n:
        unseeded = [i for i, g in enumerate(generators) if g is None]
        u[torch.tensor(unseeded, device=device)] = torch.rand(
            len(unseeded), dtype=torch.float64, device=device
        )
    draws = [
        torch.rand(1, generator=generators[i], dtype=torch.float64, device=device) for i in seeded
    ]
    u[torch.tensor(seeded, device=device)] = torch.cat(draws)
    return u


def _inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Row r's token: the first index whose cumulative weight exceeds u[r] * total weight.

    `weights` is [rows, vocab], nonnegative with a positive sum per row, and
    need not be normalised; `u` is [rows] float64 in [0, 1). The cumulative
    sums are float64 (block sums, then a cumsum within the chosen block), so a
    zero-weight token, which adds nothing, cannot be chosen; `_nonzero_fallback`
    guards the last bit of rounding between block sums and in-block cumsums.
    """
    n, vocab = weights.shape
    device = weights.device
    block = min(_CDF_BLOCK, vocab)
    full = vocab - vocab % block
    sums = weights[:, :full].reshape(n, full // block, block).sum(dim=-1)
    if full < vocab:
        sums = torch.cat([sums, weights[:, full:].sum(dim=-1, keepdim=True)], dim=1)
    cum = sums.double().cumsum(dim=-1)
    target = (u * cum[:, -1])[:, None]
    b = torch.searchsorted(cum, target, right=True).clamp_max_(cum.shape[1] - 1)
    before = torch.where(b > 0, cum.gather(1, (b - 1).clamp_min(0)), 0.0)

    cols = b * block + torch.arange(block, device=device)
    inner = weights.gather(1, cols.clamp_max(vocab - 1)).double().masked_fill_(cols >= vocab, 0.0)
    j = torch.searchsorted(inner.cumsum(dim=-1), target - before, right=True).clamp_max_(block - 1)
    tokens = (b * block + j).squeeze(1).clamp_max_(vocab - 1)
    return _nonzero_fallback(weights, tokens)


def _nonzero_fallback(weights: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Move any token with zero weight to the nearest earlier nonzero one (else the next)."""
    zero = weights.gather(1, tokens[:, None]).squeeze(1) == 0
    if bool(zero.any()):
        for r in zero.nonzero().squeeze(1).tolist():
            nonzero = weights[r].nonzero().squeeze(1)
            earlier = nonzero[nonzero <= tokens[r]]
            tokens[r] = earlier[-1] if len(earlier) else nonzero[0]
    return tokens


def _token_logprobs(
    logits: torch.Tensor, token_ids: Sequence[int], ks: Sequence[int], *, normalize: bool = True
) -> list[TokenLogprobs]:
    """log_softmax once (unless the logits themselves are reported), then the chosen
    token's value and rank and a shared top-k."""
    if not token_ids:
        return []
    lp = torch.log_softmax(logits.float(), dim=-1) if normalize else logits.float()
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


def _compose(outer: torch.Tensor | None, inner: torch.Tensor | None) -> torch.Tensor | None:
    """Row index of `inner` applied after `outer`, with None meaning all rows, as in `_take`."""
    if outer is None:
        return inner
    return outer if inner is None else outer[inner]
