"""Triton grouped-GEMM experts against kernels.experts (the torch path)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import torch

from benchmarks.int_linear import random_packed
from engine.llm import LLM, greedy
from engine.models.moe import SparseMoE
from kernels.clamped_swiglu_and_mul import clamped_swiglu_and_mul as torch_clamped_swiglu
from kernels.expert_stack import ExpertStack
from kernels.experts import experts as torch_experts
from kernels.fp8 import Fp8Block, Fp8Experts
from kernels.gelu_tanh_and_mul import gelu_tanh_and_mul as torch_gelu_tanh_and_mul
from kernels.packed_int import IntExperts
from kernels.silu_and_mul import silu_and_mul as torch_silu_and_mul
from kernels.triton_clamped_swiglu_and_mul import clamped_swiglu_and_mul
from kernels.triton_experts import align_pairs, fused_experts
from kernels.triton_gelu_tanh_and_mul import gelu_tanh_and_mul
from kernels.triton_silu_and_mul import silu_and_mul

from ..engine.int_quantized_variants import (
    is_projection,
    write_awq_variant,
    write_gptq_variant,
)
from ..engine.quantized_variants import (
    assert_backends_agree,
    write_compressed_tensors_variant,
    write_fp8_variant,
)
from .tolerances import DTYPES, assert_close

HIDDEN, INTER = 48, 40  # neither a multiple of the 32/64-wide tiles


def _routing(
    tokens: int, num_experts: int, top_k: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's distinct top-k experts and renormalised fp32 weights, as a router's."""
    logits = torch.randn(tokens, num_experts, generator=gen)
    weights, chosen = torch.topk(logits.softmax(-1), top_k, dim=-1)
    return weights / weights.sum(-1, keepdim=True), chosen


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "tokens,num_experts,top_k",
    # A decode of one token; a few tokens over many experts (most get none); many
    # tokens over few (several row blocks per expert); top-1.
    [(1, 8, 2), (5, 16, 4), (70, 4, 2), (33, 6, 1)],
)
def test_fused_experts_match_torch(
    device: torch.device, dtype: torch.dtype, tokens: int, num_experts: int, top_k: int
) -> None:
    gen = torch.Generator().manual_seed(tokens * 100 + num_experts)
    x = torch.randn(tokens, HIDDEN, generator=gen)
    gate_up = torch.randn(num_experts, 2 * INTER, HIDDEN, generator=gen) / HIDDEN**0.5
    down = torch.randn(num_experts, HIDDEN, INTER, generator=gen) / INTER**0.5
    weights, chosen = _routing(tokens, num_experts, top_k, gen)
    x, gate_up, down = (t.to(device, dtype) for t in (x, gate_up, down))
    weights, chosen = weights.to(device), chosen.to(device)
    # Mixtral weighs in fp32, Qwen3-MoE in the model's dtype.
    for routing in (weights, weights.to(dtype)):
        got = fused_experts(x, gate_up, down, routing, chosen, silu_and_mul)
        expected = torch_experts(x, gate_up, down, routing, chosen, torch_silu_and_mul)
        assert got.dtype == dtype
        assert_close(got, expected)


def test_fused_experts_with_gelu_and_no_tokens(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(7, HIDDEN, generator=gen).to(device)
    gate_up = (torch.randn(4, 2 * INTER, HIDDEN, generator=gen) / HIDDEN**0.5).to(device)
    down = (torch.randn(4, HIDDEN, INTER, generator=gen) / INTER**0.5).to(device)
    weights, chosen = _routing(7, 4, 2, gen)
    weights, chosen = weights.to(device), chosen.to(device)
    got = fused_experts(x, gate_up, down, weights, chosen, gelu_tanh_and_mul)
    expected = torch_experts(x, gate_up, down, weights, chosen, torch_gelu_tanh_and_mul)
    assert_close(got, expected)
    empty = fused_experts(x[:0], gate_up, down, weights[:0], chosen[:0], gelu_tanh_and_mul)
    assert empty.shape == (0, HIDDEN)


@pytest.mark.parametrize("dtype", [DTYPES[0], DTYPES[2]])
def test_fused_experts_with_biases_and_clamped_swiglu(
    device: torch.device, dtype: torch.dtype
) -> None:
    """gpt-oss's experts: biases after both matmuls, the clamped SwiGLU between them,
    weights in the model's dtype; a decode-sized and a prefill-sized batch."""
    gen = torch.Generator().manual_seed(21)
    num_experts, top_k = 8, 4
    gate_up = torch.randn(num_experts, 2 * INTER, HIDDEN, generator=gen) / HIDDEN**0.5
    down = torch.randn(num_experts, HIDDEN, INTER, generator=gen) / INTER**0.5
    gate_up_bias = 0.5 * torch.randn(num_experts, 2 * INTER, generator=gen)
    down_bias = 0.5 * torch.randn(num_experts, HIDDEN, generator=gen)
    params = [t.to(device, dtype) for t in (gate_up, down, gate_up_bias, down_bias)]
    for tokens in (2, 45):
        x = torch.randn(tokens, HIDDEN, generator=gen).to(device, dtype)
        weights, chosen = _routing(tokens, num_experts, top_k, gen)
        weights, chosen = weights.to(device, dtype), chosen.to(device)
        triton_act = partial(clamped_swiglu_and_mul, alpha=1.702, limit=7.0)
        torch_act = partial(torch_clamped_swiglu, alpha=1.702, limit=7.0)
        got = fused_experts(x, params[0], params[1], weights, chosen, triton_act, *params[2:])
        expected = torch_experts(x, params[0], params[1], weights, chosen, torch_act, *params[2:])
        assert_close(got, expected)
        without = torch_experts(x, params[0], params[1], weights, chosen, torch_act)
        assert not torch.allclose(without, expected, atol=0.1)  # the biases count


def _fp8_stack(
    experts: int, rows: int, cols: int, block: Fp8Block, gen: torch.Generator
) -> Fp8Experts:
    """Random e4m3 values (|v| up to ~30) and tile scales of ~1 / (10 sqrt(cols))."""
    values = (torch.randn(experts, rows, cols, generator=gen) * 8).to(torch.float8_e4m3fn)
    scales = torch.rand(experts, *block.scales_shape(rows, cols), generator=gen)
    return Fp8Experts(values.view(torch.uint8), (0.5 + scales) / (10 * cols**0.5), block)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block", [(16, 16), (1, 0)])  # tiles cut short; a scale per row
@pytest.mark.parametrize("tokens", [2, 45])
def test_fused_experts_on_fp8_weights_match_torch(
    device: torch.device, dtype: torch.dtype, block: tuple[int, int], tokens: int
) -> None:
    """The `-FP8` MoE releases' experts: the Triton GEMMs, decoding e4m3 tiles with their
    scales as they read them, against the torch loop on the dequantized stacks, which
    the torch loop on the FP8 stacks is exactly."""
    gen = torch.Generator().manual_seed(tokens)
    num_experts, top_k = 6, 2

    def stack(rows: int, cols: int) -> Fp8Experts:
        tiles = Fp8Block(block[0], block[1] or cols)
        fp8 = _fp8_stack(num_experts, rows, cols, tiles, gen)
        return Fp8Experts(fp8.values.to(device), fp8.scales.to(device), tiles)

    gate_up, down = stack(2 * INTER, HIDDEN), stack(HIDDEN, INTER)
    _assert_fused_matches_the_loop(gate_up, down, tokens, top_k, dtype, device, gen)


def _assert_fused_matches_the_loop(
    gate_up: ExpertStack,
    down: ExpertStack,
    tokens: int,
    top_k: int,
    dtype: torch.dtype,
    device: torch.device,
    gen: torch.Generator,
) -> None:
    """The Triton GEMMs on quantized stacks, decoding them as they read them, against
    the torch loop on the dequantized stacks, which the torch loop on the quantized
    stacks is exactly."""
    num_experts, _, hidden = gate_up.shape
    x = torch.randn(tokens, hidden, generator=gen).to(device, dtype)
    weights, chosen = _routing(tokens, num_experts, top_k, gen)
    weights, chosen = weights.to(device), chosen.to(device)
    plain = [torch.stack([s.expert(e, dtype) for e in range(num_experts)]) for s in (gate_up, down)]
    expected = torch_experts(x, *plain, weights, chosen, torch_silu_and_mul)
    on_quantized = torch_experts(x, gate_up, down, weights, chosen, torch_silu_and_mul)
    assert torch.equal(on_quantized, expected)
    got = fused_experts(x, gate_up, down, weights, chosen, silu_and_mul)
    assert_close(got, expected)


def _int_stack(
    experts: int, rows: int, cols: int, bits: int, group_size: int, act_order: bool, seed: int
) -> IntExperts:
    """Each expert its own random packed matrix (act-order: its own shuffled groups)."""
    matrices = [
        random_packed((rows, cols), bits, act_order, torch.device("cpu"), seed + e, group_size)
        for e in range(experts)
    ]
    parts = ("codes", "scales", "zeros", "groups")
    stacked = [torch.stack([getattr(m, part) for m in matrices]) for part in parts]
    return IntExperts(*stacked, bits, matrices[0].group_size)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "bits,group_size,act_order",
    # Runs whole tiles fit in (scales read once a tile: 32-deep fp32 tiles, 64-deep
    # others); runs cut short (HIDDEN and INTER are no multiples of 32); runs narrower
    # than a tile (read per element); act-order's shuffled groups.
    [(8, 32, False), (4, 64, False), (4, 16, False), (2, 8, False), (4, 16, True)],
)
@pytest.mark.parametrize("tokens", [2, 45])
def test_fused_experts_on_packed_integers_match_torch(
    device: torch.device,
    dtype: torch.dtype,
    bits: int,
    group_size: int,
    act_order: bool,
    tokens: int,
) -> None:
    _check_packed_experts(device, dtype, bits, group_size, act_order, tokens, HIDDEN, INTER)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act_order", [False, True])
def test_packed_experts_of_a_release_group_size_over_several_tiles(
    device: torch.device, dtype: torch.dtype, act_order: bool
) -> None:
    """Groups of 128 (the releases'), over inputs several tiles deep: each tile reads
    its own group's scales (a tile index read for a group index would pass above)."""
    _check_packed_experts(device, dtype, 4, 128, act_order, 9, 320, 264)


def _check_packed_experts(
    device: torch.device,
    dtype: torch.dtype,
    bits: int,
    group_size: int,
    act_order: bool,
    tokens: int,
    hidden: int,
    inter: int,
) -> None:
    """GPTQ and AWQ MoE releases' experts kept packed: the Triton GEMMs, decoding each
    code with its group's scale and zero as they read it, against the torch loop on the
    dequantized stacks, which the torch loop on the packed stacks is exactly."""
    gen = torch.Generator().manual_seed(tokens + bits)
    num_experts, top_k = 6, 2

    def stack(rows: int, cols: int, seed: int) -> IntExperts:
        packed = _int_stack(num_experts, rows, cols, bits, group_size, act_order, seed)
        parts = (packed.codes, packed.scales, packed.zeros, packed.groups)
        return IntExperts(*(t.to(device) for t in parts), bits, packed.group_size)

    gate_up, down = stack(2 * inter, hidden, 10), stack(hidden, inter, 20)
    assert (gate_up.group_size == 0) == act_order
    _assert_fused_matches_the_loop(gate_up, down, tokens, top_k, dtype, device, gen)


@pytest.mark.slow  # ~10 s each in Triton's interpreter
# compressed-tensors' per-channel scales take the per-row path Mixtral's per-matrix ones do.
@pytest.mark.parametrize("family,scheme", [("qwen3_moe", "tiles 16"), ("mixtral", "tensor")])
def test_an_fp8_moe_checkpoint_keeps_its_experts_fp8_on_triton(
    family: str, scheme: str, make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """An MoE FP8 checkpoint (its experts' matrices FP8 one by one, as released) on the
    Triton backend: each layer's expert stacks stay e4m3 bytes with their scales
    stacked beside them (16-row tiles; Mixtral's w1/w2/w3 with a scale per matrix, as
    compressed-tensors writes it, spread over its rows), and the torch backend's
    greedy tokens and logprobs on the dequantized weights."""
    fp8, reference = tmp_path / "fp8", tmp_path / "reference"
    source = make_random_model(family)
    if scheme == "tiles 16":
        write_fp8_variant(source, fp8, reference, [16, 16])
    else:
        write_compressed_tensors_variant(source, fp8, reference, scheme)

    def check(backend: str, llm: LLM) -> None:
        sparse = [layer.mlp for layer in llm.engine.runner.model.layers]
        sparse = [mlp for mlp in sparse if isinstance(mlp, SparseMoE)]
        assert sparse
        for moe in sparse:
            kept = moe.fp8_blocks is not None
            assert kept == (backend == "triton")
            assert (moe.gate_up.dtype == torch.uint8) == kept
            assert (moe.down.dtype == torch.uint8) == kept

    assert_backends_agree(fp8, check)


# An expert left in full precision (its layer's stacks are then dequantized).
_PLAIN_EXPERT = "layers.0.block_sparse_moe.experts.2.w2.weight"


@pytest.mark.slow  # ~10 s each in Triton's interpreter
@pytest.mark.parametrize(
    "family,scheme",
    [
        ("qwen3_moe", "gptq"),
        ("qwen3_moe", "gptq act-order"),
        # Each matrix its own act-order: gate and up apart, so the experts dequantize.
        ("qwen3_moe", "gptq act-order apart"),
        # A shared expert beside the experts, packed as a dense MLP is.
        ("qwen2_moe", "gptq"),
        ("mixtral", "awq"),
        ("mixtral", "awq one expert plain"),
    ],
)
def test_a_packed_moe_checkpoint_keeps_its_experts_packed_on_triton(
    family: str, scheme: str, make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """A GPTQ or AWQ MoE checkpoint (each expert's matrices packed one by one, as
    released) on the Triton backend: each layer's expert stacks stay int32 words with
    their scales, zeros and column groups stacked beside them (act-order: each expert's
    own shuffled groups, its gate and up sharing theirs as they share an input; the
    down matrices' last group cut short), and give the torch backend's greedy tokens
    and logprobs on the dequantized weights. A layer whose experts cannot share packed
    stacks (gate and up grouped apart, an expert in full precision) is dequantized."""
    folder, reference = tmp_path / "packed", tmp_path / "reference"
    source = make_random_model(family)
    if scheme.startswith("awq"):
        plain = _PLAIN_EXPERT if scheme == "awq one expert plain" else "(none)"
        write_awq_variant(
            source,
            folder,
            reference,
            lambda n: is_projection(n) and not n.endswith(plain),
        )
    else:
        act_order = scheme.startswith("gptq act-order")
        apart = scheme.endswith("apart")
        write_gptq_variant(
            source, folder, reference, 4, act_order=act_order, order_by_input=not apart
        )

    def check(backend: str, llm: LLM) -> None:
        model = llm.engine.runner.model
        sparse = [(i, layer.mlp) for i, layer in enumerate(model.layers)]
        sparse = [(i, mlp) for i, mlp in sparse if isinstance(mlp, SparseMoE)]
        assert sparse
        for index, moe in sparse:
            kept = moe.int_bits is not None
            packable = not scheme.endswith(("apart", "plain")) or (
                scheme.endswith("plain") and f"layers.{index}." not in _PLAIN_EXPERT
            )
            assert kept == (backend == "triton" and packable)
            assert (moe.gate_up.dtype == torch.int32) == kept
            if moe.shared_expert is not None:
                assert (moe.shared_expert.gate_up_proj.weight.dtype == torch.int32) == (
                    backend == "triton"
                )
            if not kept:
                continue
            experts, inter, hidden = moe.gate.shape[0], moe.inter, moe.gate.shape[1]
            assert moe.gate_up.shape == (experts, 2 * inter, hidden // 8)  # 8 codes a word
            assert moe.down_groups.shape == (experts, inter)
            act_order = scheme == "gptq act-order"
            assert moe.int_group_sizes == ((0, 0) if act_order else (32, 32))
            distinct = {tuple(groups.tolist()) for groups in moe.gate_up_groups}
            assert len(distinct) == (experts if act_order else 1)
        if scheme == "awq one expert plain" and backend == "triton":
            assert [moe.int_bits is not None for _, moe in sparse] == [False, True]

    assert_backends_agree(folder, check)


def _first_moe(llm: LLM) -> SparseMoE:
    return next(
        layer.mlp for layer in llm.engine.runner.model.layers if isinstance(layer.mlp, SparseMoE)
    )


@pytest.mark.slow  # ~8 s in Triton's interpreter
def test_packed_experts_sleep_and_wake_with_their_groups(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """Sleep level 2 drops every weight and buffer and wake reloads them: act-order's
    per-expert groups (buffers, set after allocation) come back, so do the tokens."""
    folder = tmp_path / "packed"
    source = make_random_model("qwen3_moe")
    write_gptq_variant(
        source, folder, tmp_path / "reference", 4, act_order=True, order_by_input=True
    )
    llm = LLM(str(folder), attention_backend="triton", dtype="float32", num_kv_blocks=64)
    moe = next(
        layer.mlp for layer in llm.engine.runner.model.layers if isinstance(layer.mlp, SparseMoE)
    )
    assert moe.int_bits == 4
    groups = moe.gate_up_groups.clone()
    prompt = [[5, 77, 300, 12]]
    before = llm.generate(prompt, greedy(6, min_tokens=6))[0].token_ids
    llm.engine.sleep(2)
    llm.engine.wake_up()
    moe = next(
        layer.mlp for layer in llm.engine.runner.model.layers if isinstance(layer.mlp, SparseMoE)
    )
    assert torch.equal(moe.gate_up_groups, groups)
    assert llm.generate(prompt, greedy(6, min_tokens=6))[0].token_ids == before


@pytest.mark.slow  # ~8 s in Triton's interpreter
def test_quantization_fp8_keeps_projections_and_experts_fp8_on_triton(
    make_random_model: Callable[[str], Path],
) -> None:
    """--quantization fp8 on a full-precision MoE checkpoint: on Triton every projection
    but the LM head and every expert stack are e4m3 bytes with a scale per row, and the
    torch backend (which dequantizes them again) gives the same tokens and logprobs."""

    def check(backend: str, llm: LLM) -> None:
        model = llm.engine.runner.model
        kept = backend == "triton"
        for layer in model.layers:
            assert (layer.self_attn.qkv_proj.weight.dtype == torch.uint8) == kept
            assert (layer.self_attn.o_proj.fp8_block is not None) == kept
            if isinstance(layer.mlp, SparseMoE):
                assert (layer.mlp.gate_up.dtype == torch.uint8) == kept
                assert (layer.mlp.fp8_blocks is not None) == kept
            else:  # a dense layer between the sparse ones
                assert (layer.mlp.down_proj.fp8_block is not None) == kept
        assert any(isinstance(layer.mlp, SparseMoE) for layer in model.layers)
        assert model.lm_head.fp8_block is None

    assert_backends_agree(make_random_model("qwen3_moe"), check, quantization="fp8")


@pytest.mark.parametrize("block_m", [16, 64])
def test_aligned_pairs_cover_each_pair_once_in_its_experts_blocks(block_m: int) -> None:
    gen = torch.Generator().manual_seed(block_m)
    num_experts, top_k = 10, 3
    _, chosen = _routing(37, num_experts, top_k, gen)
    aligned = align_pairs(chosen, num_experts, block_m)
    num_pairs = chosen.numel()
    blocks = aligned.sorted_pairs.view(-1, block_m)
    assert blocks.shape[0] == aligned.block_experts.shape[0]
    real = aligned.sorted_pairs[aligned.sorted_pairs < num_pairs]
    assert sorted(real.tolist()) == list(range(num_pairs))  # every pair exactly once
    flat = chosen.flatten()
    used = 0
    for rows, expert in zip(blocks, aligned.block_experts.tolist(), strict=True):
        pairs = rows[rows < num_pairs]
        if expert < 0:
            assert pairs.numel() == 0  # past the last run: skipped by the kernel
            continue
        used += 1
        assert pairs.numel() > 0 and bool((flat[pairs] == expert).all())
        assert pairs.tolist() == sorted(pairs.tolist())  # stable: token order kept
    # One row block per started BLOCK_M of each expert's pairs, no more.
    counts = torch.bincount(flat, minlength=num_experts)
    assert used == int(((counts + block_m - 1) // block_m).sum())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_fused_experts_record_in_a_cuda_graph_without_a_host_sync() -> None:
    """What lets an MoE model's decodes replay graphs: no host sync (an error here), and a
    replay on new inputs gives what an eager call gives."""
    device = torch.device("cuda")
    gen = torch.Generator().manual_seed(5)
    gate_up = (torch.randn(8, 2 * INTER, HIDDEN, generator=gen) / HIDDEN**0.5).to(device)
    down = (torch.randn(8, HIDDEN, INTER, generator=gen) / INTER**0.5).to(device)
    x = torch.randn(4, HIDDEN, generator=gen).to(device)
    weights, chosen = (t.to(device) for t in _routing(4, 8, 2, gen))
    fused_experts(x, gate_up, down, weights, chosen, silu_and_mul)  # compile first
    graph = torch.cuda.CUDAGraph()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.cuda.graph(graph):
            out = fused_experts(x, gate_up, down, weights, chosen, silu_and_mul)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    new_weights, new_chosen = _routing(4, 8, 2, gen)
    x.copy_(torch.randn(4, HIDDEN, generator=gen).to(device))
    weights.copy_(new_weights.to(device))
    chosen.copy_(new_chosen.to(device))
    graph.replay()
    assert_close(out, fused_experts(x, gate_up, down, weights, chosen, silu_and_mul))
