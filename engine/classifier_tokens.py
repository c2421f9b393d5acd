"""vLLM's `classifier_from_token`: a causal LM served as a classifier whose head is made
of its own LM head's rows, so a reranker released as a chat model (Qwen3-Reranker,
which answers "yes" or "no") scores pairs on /score and /rerank without conversion:

    --hf-overrides '{"architectures": ["Qwen3ForSequenceClassification"],
                     "classifier_from_token": ["no", "yes"],
                     "is_original_qwen3_reranker": true}'

With two tokens (false, true) and vLLM's default method `from_2_way_softmax`, the
head is one row, true's minus false's: its sigmoid is the softmax of the two logits'
"true" share, the model's P(yes | yes or no). With `method: no_post_processing`, or
another number of tokens, each token's row is a label of its own (LABEL_i, in order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

TWO_WAY = "from_2_way_softmax"
ROWS = "no_post_processing"


@dataclass(frozen=True)
class TokenHead:
    tokens: tuple[str, ...]
    two_way: bool

    @property
    def labels(self) -> tuple[str, ...]:
        """transformers' default names, as vLLM answers them: LABEL_0 (one label for a
        two-way head), else one LABEL_i per token."""
        count = 1 if self.two_way else len(self.tokens)
        return tuple(f"LABEL_{i}" for i in range(count))


def token_head(hf: dict[str, Any]) -> TokenHead | None:
    """The head a config asks for (None: a classifier's own `score`), or a ValueError."""
    tokens = hf.get("classifier_from_token")
    if hf.get("is_original_qwen3_reranker") and not tokens:
        tokens = ["no", "yes"]
    if not tokens:
        return None
    if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens):
        raise ValueError("classifier_from_token must be a list of token strings")
    method = hf.get("method") or (TWO_WAY if len(tokens) == 2 else ROWS)
    if method not in (TWO_WAY, ROWS):
        raise ValueError(f"method {method!r} is not one of {TWO_WAY}, {ROWS}")
    if method == TWO_WAY and len(tokens) != 2:
        raise ValueError(f"{TWO_WAY} takes two tokens (false, true), got {len(tokens)}")
    return TokenHead(tuple(tokens), method == TWO_WAY)


def head_weight(lm_head: torch.Tensor, token_ids: tuple[int, ...], two_way: bool) -> torch.Tensor:
    """The classifier head's weight from the LM head's (or tied embedding's) rows."""
    rows = lm_head[list(token_ids)].float()
    if two_way:
        return (rows[1] - rows[0]).unsqueeze(0)
    return rows
