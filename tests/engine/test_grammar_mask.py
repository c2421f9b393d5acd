"""Bitmasks to logits: bit j of word w allows token 32 * w + j; everything else becomes -inf."""

from __future__ import annotations

import torch

from engine.grammar_mask import allowed_tokens, apply_bitmask_, words_for
from engine.sampler import Sampler, SamplingBatch, process_logits
from engine.sampling_params import SamplingParams


def reference_allowed(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    rows = []
    for words in bitmask.tolist():
        bits = [(words[t // 32] >> (t % 32)) & 1 for t in range(vocab)]
        rows.append(bits)
    return torch.tensor(rows, dtype=torch.bool)


def random_bitmask(rows: int, vocab: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(
        -(2**31), 2**31, (rows, words_for(vocab)), generator=g, dtype=torch.int64
    ).to(torch.int32)


def test_bits_unpack_in_token_order_including_the_sign_bit() -> None:
    for vocab in (32, 33, 95, 200):
        bitmask = random_bitmask(3, vocab, vocab)
        assert torch.equal(allowed_tokens(bitmask, vocab), reference_allowed(bitmask, vocab))
    only_31 = torch.tensor([[-(2**31)]], dtype=torch.int32)
    assert allowed_tokens(only_31, 32)[0].nonzero().flatten().tolist() == [31]


def test_apply_masks_only_the_given_rows() -> None:
    vocab = 70
    logits = torch.randn(4, vocab)
    bitmask = random_bitmask(2, vocab, 1)
    out = logits.clone()
    apply_bitmask_(out, [1, 3], bitmask)
    allowed = reference_allowed(bitmask, vocab)
    assert torch.equal(out[[0, 2]], logits[[0, 2]])
    for mask_row, row in zip(allowed, (1, 3), strict=True):
        assert torch.equal(out[row][mask_row], logits[row][mask_row])
        assert torch.isneginf(out[row][~mask_row]).all()
    every = logits.clone()
    apply_bitmask_(every, [0, 1, 2, 3], random_bitmask(4, vocab, 2))
    assert torch.equal(torch.isfinite(every), reference_allowed(random_bitmask(4, vocab, 2), vocab))


def _batch(params: list[SamplingParams], rows: list[int], bitmask: torch.Tensor) -> SamplingBatch:
    return SamplingBatch(
        params=params,
        prompt_token_ids=[[1, 2]] * len(params),
        output_token_ids=[[]] * len(params),
        generators=[None] * len(params),
        eos_token_ids=frozenset({0}),
        grammar_rows=rows,
        grammar_bitmask=bitmask,
    )


def test_the_sampler_never_picks_a_token_the_mask_forbids() -> None:
    vocab = 64
    allowed_ids = [5, 17, 40]
    bitmask = torch.zeros(1, words_for(vocab), dtype=torch.int32)
    for t in allowed_ids:
        bitmask[0, t // 32] |= 1 << (t % 32)
    logits = torch.randn(3, vocab)
    logits[:, 63] = 50.0  # what the model wants, forbidden on row 1
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.0, logit_bias={63: 100.0}, repetition_penalty=1.3),
        SamplingParams(temperature=0.0),
    ]
    processed = process_logits(logits, _batch(params, [1], bitmask))
    assert torch.isfinite(processed[1]).nonzero().flatten().tolist() == allowed_ids
    assert torch.equal(processed[0], logits[0]) and torch.equal(processed[2], logits[2])
    sampler = Sampler()
    for _ in range(50):
        tokens = sampler(logits, _batch(params, [1], bitmask)).token_ids
        assert tokens[0] == tokens[2] == 63
        assert tokens[1] in allowed_ids


def test_min_tokens_does_not_mask_eos_on_a_constrained_row() -> None:
    """A complete constraint allows only EOS; masking it too would leave nothing."""
    vocab = 32
    only_eos = torch.tensor([[1]], dtype=torch.int32)  # token 0, the EOS here
    params = [SamplingParams(temperature=0.0, min_tokens=10)] * 2
    logits = torch.randn(2, vocab)
    processed = process_logits(logits, _batch(params, [0], only_eos))
    assert torch.isfinite(processed[0]).nonzero().flatten().tolist() == [0]
    assert torch.isneginf(processed[1][0])  # the free row still waits for min_tokens
