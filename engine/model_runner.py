"""Run one scheduled step: flatten the batch, call the model, sample.

The runner owns the weights, the KV cache tensors and the attention backend.
It lays a step out as one flat token vector (single-token sequences first, so
the backend can batch them as decodes), computes logits only for rows that
need them (the last token of each sequence that samples, plus every prompt
row of a request that asked for prompt logprobs), and hands those to the
sampler.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from engine import fp8_checkpoint, fp8_linears, int_checkpoint, int_linears, mxfp4_checkpoint
from engine.checkpoint_reader import checkpoint_files, is_pickled, read_tensors
from engine.config import ModelConfig
from engine.configuration_error import ConfigurationError
from engine.decode_graphs import DecodeGraphs
from engine.grammar_mask import fill_bitmask
from engine.models import build_model
from engine.models.lora import LoRAContext
from engine.online_fp8 import quantize_to_fp8
from engine.pooler import Pooler
from engine.sampler import Sampler, SamplingBatch, TokenLogprobs, prompt_logprobs
from engine.scheduler import ScheduledSequence
from engine.sequence import Sequence as EngineSequence
from kernels.attention import AttentionBackend, AttentionInputs
from kernels.fused_ops import TORCH_OPS, FusedOps

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepResult:
    """What one forward pass produced, keyed by the scheduled order of samplers."""

    sampled: list[ScheduledSequence]
    # Per sampled sequence, the tokens it gained: one, or with drafts the accepted ones
    # and the token the model chose after them; with their logprobs (None: not asked).
    tokens: list[list[int]]
    logprobs: list[list[TokenLogprobs | None]]
    prompt_logprobs: dict[int, list[TokenLogprobs]]
    # Embedding sequences whose prompt ended this step: seq_id -> their vector (CPU, fp32).
    pooled: dict[int, torch.Tensor] = field(default_factory=dict)


def load_model(
    folder: Path,
    config: ModelConfig,
    max_positions: int,
    dtype: torch.dtype,
    device: torch.device,
    ops: FusedOps = TORCH_OPS,
    lm_head: bool = True,
    online_fp8: bool = False,
) -> torch.nn.Module:
    """Build the model on `device` with `ops` and stream the checkpoint's weights into it;
    `online_fp8`: then quantize its projections to FP8 (engine/online_fp8.py)."""
    with torch.device("meta"):
        model = build_model(config, max_positions, ops, lm_head=lm_head).to(dtype)
        if config.is_classifier:
            # A classifier's head stays float32, as vLLM keeps it: in bf16, scores in
            # [2, 4) fall on a 1/64 grid and a reranker's close documents would tie.
            model.score.float()
    files = checkpoint_files(folder)
    kept_fp8: frozenset[str] = frozenset()
    fp8_names: set[str] = set()
    block = config.weight_block_size
    suffix = config.weight_scale_suffix
    if config.weight_quantization == "fp8":
        if any(is_pickled(f) for f in files):
            raise ConfigurationError(
                f"{folder}: an FP8 checkpoint is read from safetensors, not pytorch_model*.bin"
            )
        dtypes = fp8_linears.checkpoint_dtypes(files)
        suffix = fp8_checkpoint.scale_suffix(suffix, dtypes)
        fp8_names = {name for name, kind in dtypes.items() if kind == fp8_linears.FP8_DTYPE}
        if ops.fp8_linear is not None:
            kept_fp8 = fp8_linears.keep_fp8_linears(model, fp8_names, block, ops.fp8_linear)
        if ops.experts_fp8:
            kept_fp8 |= fp8_linears.keep_fp8_experts(model, fp8_names, block)
        if fp8_names:
            logger.info("FP8 kept for %d of %d FP8 matrices", len(kept_fp8), len(fp8_names))
    kept_int: frozenset[str] = frozenset()
    int_groups: dict[str, torch.Tensor] = {}
    int_side: dict[str, torch.Tensor] = {}
    if config.int_weights is not None:
        method = config.weight_quantization or ""
        # Scales, zeros and group indices: small, and needed to decide what stays packed.
        wanted = partial(int_checkpoint.is_side_tensor, method=method)
        int_side = dict(read_tensors(files, wanted))
        # Pickled shards have no headers to read dtypes from: dequantized, as on torch.
        pickled = any(is_pickled(f) for f in files)
        if ops.int_linear is not None and not pickled:
            layers = int_checkpoint.packed_layers(fp8_linears.checkpoint_dtypes(files), method)
            kept_int, int_groups = int_linears.keep_int_linears(
                model, layers, int_side, method, config.int_weights, ops.int_linear
            )
            if ops.experts_int:
                kept_experts, expert_groups = int_linears.keep_int_experts(
                    model, layers, int_side, method, config.int_weights
                )
                kept_int |= kept_experts
                int_groups.update(expert_groups)
            logger.info("packed integers kept for %d of %d layers", len(kept_int), len(layers))
        else:
            # The torch path: every matrix dequantized, at the model dtype's memory.
            shown = "compressed-tensors integer" if method == "int" else method.upper()
            logger.info("%s checkpoint dequantized into %s as it loads", shown, dtype)
    # Materialise without random init (the checkpoint overwrites every weight). Not
    # `to_empty`: its empty_like on meta tensors runs torch's Python references, which
    # import sympy (~0.5 s of a worker's startup).
    model = model._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device=device))
    model.rebuild_buffers(device)
    int_linears.set_groups(model, int_groups)

    weights = read_tensors(files)
    # The scales first (small; a shard may hold a matrix whose scale is in another).
    if config.weight_quantization == "fp8":
        scales = dict(read_tensors(files, partial(fp8_checkpoint.is_scale, suffix=suffix)))
        weights = fp8_checkpoint.dequantized_weights(
            weights, scales, dtype, block, kept_fp8, suffix
        )
    elif config.weight_quantization == "mxfp4" and not mxfp4_checkpoint.keeps_mxfp4(config, ops):
        scales = dict(read_tensors(files, mxfp4_checkpoint.is_scale))
        weights = mxfp4_checkpoint.dequantized_weights(weights, scales, dtype)
    elif config.int_weights is not None:
        weights = int_checkpoint.model_weights(
            weights, int_side, config.weight_quantization or "", config.int_weights, dtype, kept_int
        )
    model.load_weights(weights)
    if online_fp8 and not fp8_names:  # a checkpoint's own FP8 weights are served as they are
        quantize_to_fp8(model, ops)
    model.pack_weights()
    return model.eval()


class ModelRunner:
    def __init__(
        self,
        model: torch.nn.Module,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        backend: AttentionBackend,
        block_size: int,
        eos_token_ids: frozenset[int],
        device: torch.device,
        decode_graphs: DecodeGraphs | None = None,
        grammar_vocab_size: int = 0,
        lora_context: LoRAContext | None = None,
        pooler: Pooler | None = None,
        every_layer_window: int | None = None,
        logprobs_mode: str = "raw_logprobs",
        causal: bool = True,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.backend = backend
        self.block_size = block_size
        self.eos_token_ids = eos_token_ids
        self.device = device
        self.sampler = Sampler(logprobs_mode)
        # Decode-only steps replay recorded CUDA graphs when the engine recorded them.
        self.decode_graphs = decode_graphs
        # Token ids a structured-output bitmask covers (the grammar compiler's vocabulary).
        self.grammar_vocab_size = grammar_vocab_size
        # Which rows each LoRA adapter serves this step (None: the engine serves none).
        self.lora_context = lora_context
        # Turns embedding sequences' hidden states into vectors (None: generate runner).
        self.pooler = pooler
        # Every layer's window where all slide (their blocks behind it are given back).
        self.every_layer_window = every_layer_window
        # False for an encoder: each token attends its whole prompt.
        self.causal = causal
        # An encoder with token types is given each token's (BERT's pairs).
        self.token_types = bool(getattr(model, "uses_token_types", False))

    @torch.inference_mode()
    def copy_blocks(self, sources: list[int], targets: list[int]) -> None:
        """Copy KV blocks `sources[i]` -> `targets[i]` in every layer: a forked beam's
        private copy of its parent's partial last block (engine/beam_requests.py)."""
        if not sources:
            return
        src = torch.tensor(sources, device=self.device)
        dst = torch.tensor(targets, device=self.device)
        for keys, values in self.kv_caches:
            keys.index_copy_(0, dst, keys.index_select(0, src))
            values.index_copy_(0, dst, values.index_select(0, src))

    @torch.inference_mode()
    def execute(self, scheduled: list[ScheduledSequence]) -> StepResult:
        ordered = [s for s in scheduled if s.num_tokens == 1]
        ordered += [s for s in scheduled if s.num_tokens != 1]
        lora = self.lora_context
        if lora is not None:
            # Each adapter's rows in at most two runs (its decodes, its other rows).
            ordered.sort(key=lambda s: (s.num_tokens != 1, _lora_order(s.seq.lora_slot)))
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        sample_rows: list[int] = []
        sampled: list[ScheduledSequence] = []
        logprob_spans: list[tuple[ScheduledSequence, int, int]] = []
        pool_spans: list[tuple[ScheduledSequence, int]] = []
        # Sampler rows per sampled sequence: one, or 1 + drafts (each draft position is
        # scored as if the drafts before it were the sequence's own tokens).
        sampler_rows: list[range] = []
        for item in ordered:
            seq = item.seq
            drafts = item.draft_token_ids
            start = seq.num_computed_tokens
            end = start + item.num_tokens
            row = len(input_ids)
            input_ids.extend(seq.token_ids[start : end - len(drafts)])
            input_ids.extend(drafts)
            positions.extend(range(start, end))
            table = seq.block_table
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            if seq.wants_prompt_logprobs and start < seq.num_prompt_tokens:
                logprob_spans.append((item, row, min(end, seq.num_prompt_tokens)))
            if seq.pooling is not None:
                pool_spans.append((item, row))
            elif item.samples:
                first = len(sample_rows)
                sample_rows.extend(
                    range(row + item.num_tokens - 1 - len(drafts), row + item.num_tokens)
                )
                sampler_rows.append(range(first, len(sample_rows)))
                sampled.append(item)
        device = self.device
        context_lens = [s.seq.num_computed_tokens + s.num_tokens for s in ordered]
        block_tables = [s.seq.block_table for s in ordered]
        if lora is not None:
            lora.set_rows([(s.seq.lora_slot, s.num_tokens) for s in ordered])
        graphs = self.decode_graphs
        # Graphs were recorded without adapters: a step with LoRA rows runs eagerly.
        eager_only = lora is not None and bool(lora.runs)
        if (
            graphs is not None
            and not eager_only
            and 0 < len(input_ids) == len(ordered) <= graphs.max_batch
        ):
            # Every sequence decodes one token: replay the recorded forward.
            hidden = graphs.run(input_ids, positions, slots, block_tables, context_lens)
        else:
            slot_mapping = torch.tensor(slots, dtype=torch.long).to(device, non_blocking=True)
            inputs = AttentionInputs(
                query_lens=[s.num_tokens for s in ordered],
                context_lens=context_lens,
                block_tables=block_tables,
                slot_mapping=slot_mapping,
                num_decodes=sum(1 for s in ordered if s.num_tokens == 1),
                block_size=bs,
                every_layer_window=self.every_layer_window,
                causal=self.causal,
            )
            metadata = self.backend.prepare(inputs)
            extra = {}
            if self.token_types:
                extra["token_type_ids"] = _token_types(ordered, device)
            hidden = self.model(
                torch.tensor(input_ids, dtype=torch.long).to(device, non_blocking=True),
                torch.tensor(positions, dtype=torch.long).to(device, non_blocking=True),
                self.kv_caches,
                self.backend,
                metadata,
                **extra,
            )
        sampler_output = None
        # A constrained sequence never has drafts: its one row is its first.
        matchers = [
            (sampler_rows[i].start, g)
            for i, item in enumerate(sampled)
            if (g := item.seq.grammar) is not None
        ]
        grammar_rows = [i for i, _ in matchers]
        grammar_bitmask = None
        if matchers:
            # On a GPU this CPU work overlaps the forward pass launched above.
            grammar_bitmask = fill_bitmask(
                [g for _, g in matchers], self.grammar_vocab_size, device
            )
        if sample_rows:
            if len(sample_rows) == hidden.shape[0]:  # every row samples: a decode step
                rows = hidden
            else:
                # A non-blocking copy: a plain one would wait for the forward to finish.
                index = torch.tensor(sample_rows).to(device, non_blocking=True)
                rows = hidden[index]
            logits = self.model.compute_logits(rows)
            per_row = [(s, d) for s in sampled for d in range(len(s.draft_token_ids) + 1)]
            sampler_output = self.sampler(
                logits,
                SamplingBatch(
                    params=[s.seq.params for s, _ in per_row],
                    prompt_token_ids=[s.seq.prompt_token_ids for s, _ in per_row],
                    output_token_ids=[
                        [*s.seq.output_token_ids, *s.draft_token_ids[:d]]
                        if d
                        else s.seq.output_token_ids
                        for s, d in per_row
                    ],
                    generators=[s.seq.generator for s, _ in per_row],
                    eos_token_ids=self.eos_token_ids,
                    grammar_rows=grammar_rows,
                    grammar_bitmask=grammar_bitmask,
                    draft_tokens=[
                        s.draft_token_ids[d] if d < len(s.draft_token_ids) else None
                        for s, d in per_row
                    ]
                    if any(s.draft_token_ids for s in sampled)
                    else None,
                ),
            )
        prompt_lps: dict[int, list[TokenLogprobs]] = {}
        for item, row, prompt_end in logprob_spans:
            seq = item.seq
            first = seq.num_computed_tokens
            # Row i predicts token i + 1; the last prompt token predicts an output token.
            last = min(prompt_end, seq.num_prompt_tokens - 1)
            if last <= first:
                prompt_lps[seq.seq_id] = []
                continue
            logits = self.model.compute_logits(hidden[row : row + (last - first)])
            prompt_lps[seq.seq_id] = prompt_logprobs(
                logits, seq.prompt_token_ids[first + 1 : last + 1], seq.params.prompt_logprobs or 0
            )
        tokens: list[list[int]] = []
        logprobs: list[list[TokenLogprobs | None]] = []
        if sampler_output is not None:
            for item, rows in zip(sampled, sampler_rows, strict=True):
                chosen = sampler_output.token_ids[rows.start : rows.stop]
                kept = accepted_length(item.draft_token_ids, chosen) + 1
                tokens.append(chosen[:kept])
                logprobs.append(sampler_output.logprobs[rows.start : rows.start + kept])
        return StepResult(sampled, tokens, logprobs, prompt_lps, self._pool(pool_spans, hidden))

    def _pool(
        self, spans: list[tuple[ScheduledSequence, int]], hidden: torch.Tensor
    ) -> dict[int, torch.Tensor]:
        """Fold each embedding sequence's rows in; the vectors of prompts that ended."""
        if not spans:
            return {}
        assert self.pooler is not None, "an embedding sequence on the generate runner"
        ended: list[tuple[EngineSequence, torch.Tensor]] = []
        for item, row in spans:
            seq = item.seq
            vector = self.pooler.absorb(
                seq, hidden[row : row + item.num_tokens], seq.num_computed_tokens
            )
            if vector is not None:
                ended.append((seq, vector))
        if not ended:
            return {}
        # One device-to-host copy for the step's vectors (the pooler makes it).
        vectors = torch.stack([v for _, v in ended])
        params = [seq.pooling for seq, _ in ended]
        finished = self.pooler.finish(vectors, params)  # type: ignore[arg-type]
        return {seq.seq_id: v for (seq, _), v in zip(ended, finished, strict=True)}


def _token_types(ordered: list[ScheduledSequence], device: torch.device) -> torch.Tensor:
    """Each row's token type: 1 from a pair's second text on (PoolingParams.segment_start),
    else 0."""
    types: list[int] = []
    for item in ordered:
        seq = item.seq
        start = seq.num_computed_tokens
        second = seq.pooling.segment_start if seq.pooling is not None else None
        if second is None:
            types.extend([0] * item.num_tokens)
        else:
            types.extend(int(p >= second) for p in range(start, start + item.num_tokens))
    return torch.tensor(types, dtype=torch.long).to(device, non_blocking=True)


def _lora_order(slot: int | None) -> int:
    return -1 if slot is None else slot


def accepted_length(drafts: Sequence[int], chosen: Sequence[int]) -> int:
    """How many drafts were kept: the prefix the sampler chose itself (a greedy row's
    argmax, or a random row's draft kept by speculative sampling; a rejected random
    row's token is never its draft, so the first rejection ends the prefix)."""
    accepted = 0
    while accepted < len(drafts) and drafts[accepted] == chosen[accepted]:
        accepted += 1
    return accepted
