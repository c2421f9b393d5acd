"""Encoders: BERT, RoBERTa and XLM-RoBERTa, for embeddings and cross-encoder scores.

What differs from the decoders (llama.py): every token attends the whole
prompt (the engine marks the step not causal: `AttentionInputs.causal`),
positions are learned embeddings (RoBERTa's start past its padding index), a
token type embedding marks BERT's second text of a pair, each sublayer ends in
a LayerNorm of its residual sum (post-norm), every projection has a bias, and
the MLP is a plain GELU, not gated. Attention still goes through the
backend's paged path, so the Triton kernels serve encoders too: the engine
computes an encoder's prompt in one step (never chunked, never from cached
blocks), so the cache only stages the step's own keys and values.

Weights load under transformers' names, with or without the `bert.` /
`roberta.` prefix a classifier's checkpoint adds; query, key and value are
fused into one projection as they arrive.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ModelConfig
from engine.models.embedding import embedding
from engine.models.linear import Linear
from kernels.attention import AttentionBackend
from kernels.fused_ops import TORCH_OPS, FusedOps

# transformers' names of a layer's parts -> ours (query/key/value are fused: QKV_PARTS).
_LAYER_PARTS = {
    "attention.output.dense": "attn_out",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "mlp_up",
    "output.dense": "mlp_down",
    "output.LayerNorm": "mlp_norm",
}
_QKV_PARTS = ("query", "key", "value")
_LAYER_NAME = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|gamma|beta)$")
# A classifier's head: BERT's pooler + classifier, RoBERTa's classifier.dense + out_proj.
_HEAD_NAMES = {
    "pooler.dense": "score.dense",
    "classifier": "score.out_proj",
    "classifier.dense": "score.dense",
    "classifier.out_proj": "score.out_proj",
}
# TF-era checkpoints name LayerNorm parameters gamma and beta (transformers renames them).
_OLD_NORM_NAMES = {"gamma": "weight", "beta": "bias"}


class EncoderEmbeddings(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.position_offset = config.position_offset
        self.word_embeddings = embedding(config.vocab_size, hidden)
        table = config.max_position_embeddings + config.position_offset
        self.position_embeddings = embedding(table, hidden)
        self.token_type_embeddings = (
            embedding(config.type_vocab_size, hidden) if config.type_vocab_size else None
        )
        self.norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, token_types: torch.Tensor | None
    ) -> torch.Tensor:
        """Summed in transformers' order (words + types, then positions), then normed."""
        hidden = self.word_embeddings(input_ids)
        if self.token_type_embeddings is not None:
            if token_types is None:
                token_types = torch.zeros_like(input_ids)
            hidden = hidden + self.token_type_embeddings(token_types)
        hidden = hidden + self.position_embeddings(positions + self.position_offset)
        return self.norm(hidden)


class EncoderLayer(nn.Module):
    """Self-attention, then the MLP, each added to its input and LayerNormed."""

    def __init__(self, config: ModelConfig, ops: FusedOps) -> None:
        super().__init__()
        hidden, eps = config.hidden_size, config.layer_norm_eps
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.scale = config.head_dim**-0.5
        self.approximate = "tanh" if config.hidden_activation == "gelu_tanh" else "none"
        self.attn_qkv = Linear(hidden, 3 * hidden, True, ops.linear)
        self.attn_out = Linear(hidden, hidden, True, ops.linear)
        self.attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.mlp_up = Linear(hidden, config.intermediate_size, True, ops.linear)
        self.mlp_down = Linear(config.intermediate_size, hidden, True, ops.linear)
        self.mlp_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(
        self,
        hidden: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        backend: AttentionBackend,
        metadata: Any,
    ) -> torch.Tensor:
        q, k, v = self.attn_qkv(hidden).view(-1, 3 * self.num_heads, self.head_dim).chunk(3, 1)
        attended = backend.forward(q, k, v, kv_cache[0], kv_cache[1], metadata, self.scale)
        hidden = self.attn_norm(self.attn_out(attended.reshape(hidden.shape)) + hidden)
        up = F.gelu(self.mlp_up(hidden), approximate=self.approximate)
        return self.mlp_norm(self.mlp_down(up) + hidden)


class ClassifierHead(nn.Module):
    """A cross-encoder's head on its first token: tanh(dense(x)), then out_proj (BERT's
    pooler and classifier, RoBERTa's classification head: the same two steps)."""

    def __init__(self, hidden: int, labels: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out_proj(torch.tanh(self.dense(pooled)))


class BertModel(nn.Module):
    """BERT / RoBERTa / XLM-RoBERTa: hidden states for the pooling runner, and with
    `score` (a `*ForSequenceClassification` checkpoint) a classifier's logits."""

    def __init__(
        self,
        config: ModelConfig,
        max_positions: int,
        ops: FusedOps = TORCH_OPS,
        lm_head: bool = False,
    ) -> None:
        super().__init__()
        if lm_head:
            raise ValueError(f"{config.architecture} has no LM head: it cannot generate")
        self.config = config
        # The runner passes each token's type (BERT's 1 for a pair's second text); with
        # one type (RoBERTa's) every token is type 0.
        self.uses_token_types = config.type_vocab_size >= 2
        self.embeddings = EncoderEmbeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config, ops) for _ in range(config.num_layers))
        if config.is_classifier:
            self.score = ClassifierHead(config.hidden_size, config.num_labels)

    def rebuild_buffers(self, device: torch.device) -> None:
        """Nothing to rebuild: the positions are learned, not computed."""

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        backend: AttentionBackend,
        metadata: Any,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The last layer's hidden states, one row per input token."""
        hidden = self.embeddings(input_ids, positions, token_type_ids)
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            hidden = layer(hidden, kv_cache, backend, metadata)
        return hidden

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """A classifier's logits for pooled first-token states, in float32 (the head's own
        dtype: load_model keeps it so)."""
        return self.score(pooled.float())

    def pack_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, Linear):
                module.pack()

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(f"{self.config.architecture} has no LM head")

    def checkpoint_name(self, hf_name: str) -> str | None:
        """A checkpoint tensor's name without the classifier's prefix (None: a tensor this
        model does not use, such as an embedding model's unused pooler)."""
        name = re.sub(r"^(bert|roberta|model)\.", "", hf_name)
        if name.endswith(("position_ids", "token_type_ids")):
            return None  # buffers some checkpoints saved
        if name.startswith(("lm_head.", "cls.")):
            return None  # a masked-LM head, saved with some encoders
        if name.startswith("pooler.") and not (self.config.is_classifier and self._bert_head):
            # Only BERT's classifier uses its pooler; RoBERTa's head has its own dense
            # layer, and some of its checkpoints (roberta-large-mnli) keep an unused pooler.
            return None
        return name

    @property
    def _bert_head(self) -> bool:
        """Whether the classifier head is BERT's (pooler + classifier), not RoBERTa's."""
        return self.config.architecture.startswith("Bert")

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy transformers-named tensors in, fusing query/key/value as they arrive."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        hidden = self.config.hidden_size
        for hf_name, tensor in weights:
            name = self.checkpoint_name(hf_name)
            if name is None:
                continue
            target, rows = self._target(name)
            if target not in params:
                raise ValueError(f"unexpected weight {hf_name!r} for {self.config.architecture}")
            part = target if rows is None else f"{target}:{rows}"
            if part in loaded:
                # Two checkpoint names for one parameter: loading both would keep whichever
                # came last, a silently wrong model.
                raise ValueError(f"weight {hf_name!r} fills {target}, which was already loaded")
            with torch.no_grad():
                if rows is None:
                    params[target].copy_(tensor)
                else:
                    params[target].narrow(0, rows * hidden, hidden).copy_(tensor)
            loaded.add(part)
        expected = {
            f"{n}:{part}" if "attn_qkv" in n else n
            for n in params
            for part in (range(3) if "attn_qkv" in n else (0,))
        }
        missing = expected - loaded
        if missing:
            raise ValueError(f"checkpoint is missing weights: {sorted(missing)[:5]}")

    def _target(self, name: str) -> tuple[str, int | None]:
        """Our parameter for a checkpoint name, and for a query/key/value part the third
        of the fused projection it fills."""
        base, _, kind = name.rpartition(".")
        kind = _OLD_NORM_NAMES.get(kind, kind)
        layer = _LAYER_NAME.match(name)
        if layer is not None:
            index, part = layer[1], layer[2]
            if part.startswith("attention.self."):
                which = part.removeprefix("attention.self.")
                if which in _QKV_PARTS:
                    return f"layers.{index}.attn_qkv.{kind}", _QKV_PARTS.index(which)
            ours = _LAYER_PARTS.get(part)
            return (f"layers.{index}.{ours}.{kind}" if ours else name), None
        if base in _HEAD_NAMES:
            return f"{_HEAD_NAMES[base]}.{kind}", None
        if base == "embeddings.LayerNorm":
            return f"embeddings.norm.{kind}", None
        return f"{base}.{kind}", None
