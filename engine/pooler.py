"""Embeddings: fold each prompt chunk's hidden states into the prompt's one vector.

A prompt may be prefilled over several steps (chunked prefill) and again
after preemption, so pooling is incremental: LAST reads the final chunk's last
row, CLS keeps the first row, MEAN keeps a float32 running sum that restarts
whenever the prompt is computed from position 0 again. MEAN and CLS read rows
a prefix-cache hit would skip, so their sequences never take cached blocks
(`Sequence.needs_every_prompt_row`); LAST always computes the last token.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from engine.pooler_config import PoolerConfig, PoolingType
from engine.pooling_params import PoolingParams
from engine.sequence import Sequence


class Pooler:
    """`head`: a sequence classifier's (hidden states -> logits); its pooled vectors are
    then the labels' probabilities (or logits), not embeddings."""

    def __init__(
        self, config: PoolerConfig, head: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        self.config = config
        self.head = head

    def absorb(self, seq: Sequence, rows: torch.Tensor, start: int) -> torch.Tensor | None:
        """Take the hidden states of prompt positions [start, start + len(rows)); return the
        pooled float32 vector once they reach the prompt's end, else None."""
        kind = self.config.pooling_type
        if kind is PoolingType.MEAN:
            part = rows.float().sum(dim=0)
            seq.pooled = part if start == 0 or seq.pooled is None else seq.pooled + part
        elif kind is PoolingType.CLS and start == 0:
            seq.pooled = rows[0].float()
        if start + rows.shape[0] < seq.num_prompt_tokens:
            return None
        if kind is PoolingType.LAST:
            return rows[-1].float()
        assert seq.pooled is not None  # computed from position 0: no cached prefix
        vector = seq.pooled / seq.num_prompt_tokens if kind is PoolingType.MEAN else seq.pooled
        seq.pooled = None
        return vector

    def finish(self, vectors: torch.Tensor, params: list[PoolingParams]) -> list[torch.Tensor]:
        """Each raw vector (a row of `vectors`, on the model's device) as the request asked,
        on the CPU: a classifier's label probabilities (softmax over its labels, a sigmoid
        for one) or logits; an embedding cut to its `dimensions`, then normalised
        (matryoshka models are trained so: truncate first, normalise after)."""
        if self.head is not None:
            return self._classify(vectors, params)
        out = []
        for vector, p in zip(vectors.cpu(), params, strict=True):
            dims = p.dimensions if p.dimensions is not None else self.config.dimensions
            if dims is not None:
                vector = vector[:dims]
            normalize = self.config.normalize if p.normalize is None else p.normalize
            if normalize:
                vector = F.normalize(vector, dim=-1)
            out.append(vector)
        return out

    def _classify(self, vectors: torch.Tensor, params: list[PoolingParams]) -> list[torch.Tensor]:
        assert self.head is not None
        logits = self.head(vectors).float().cpu()  # one device-to-host copy for the step
        out = []
        for row, p in zip(logits, params, strict=True):
            activation = p.activation if p.activation is not None else self.config.use_activation
            if activation is False:
                out.append(row)
            elif row.shape[0] == 1:
                out.append(torch.sigmoid(row))
            else:
                out.append(torch.softmax(row, dim=-1))
        return out
