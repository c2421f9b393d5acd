"""Embeddings: fold each prompt chunk's hidden states into the prompt's one vector.

A prompt may be prefilled over several steps (chunked prefill) and again
after preemption, so pooling is incremental: LAST reads the final chunk's last
row, CLS keeps the first row, MEAN keeps a float32 running sum that restarts
whenever the prompt is computed from position 0 again. MEAN and CLS read rows
a prefix-cache hit would skip, so their sequences never take cached blocks
(`Sequence.needs_every_prompt_row`); LAST always computes the last token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.pooler_config import PoolerConfig, PoolingType
from engine.pooling_params import PoolingParams
from engine.sequence import Sequence


class Pooler:
    def __init__(self, config: PoolerConfig) -> None:
        self.config = config

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
        """Each raw vector (a row of `vectors`) cut to its `dimensions`, then normalised as
        asked (matryoshka models are trained so: truncate first, normalise after)."""
        out = []
        for vector, p in zip(vectors, params, strict=True):
            dims = p.dimensions if p.dimensions is not None else self.config.dimensions
            if dims is not None:
                vector = vector[:dims]
            normalize = self.config.normalize if p.normalize is None else p.normalize
            if normalize:
                vector = F.normalize(vector, dim=-1)
            out.append(vector)
        return out
