"""Prompt-lookup drafts: the tokens that followed the latest earlier occurrence of the
sequence's last n tokens (n from `prompt_lookup_max` down to `prompt_lookup_min`).

Numpy, not a Python loop: a 4k-token sequence is scanned in tens of
microseconds, so proposing for a whole batch costs little next to a step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class NgramProposer:
    def __init__(self, lookup_min: int, lookup_max: int) -> None:
        self.lookup_min = lookup_min
        self.lookup_max = lookup_max

    def propose(self, token_ids: Sequence[int], num_tokens: int) -> list[int]:
        """Up to `num_tokens` drafts for what follows `token_ids`; [] if nothing matches."""
        length = len(token_ids)
        if num_tokens < 1 or length < self.lookup_min + 1:
            return []
        tokens = np.asarray(token_ids, dtype=np.int64)
        for n in range(min(self.lookup_max, length - 1), self.lookup_min - 1, -1):
            suffix = tokens[length - n :]
            # Windows that start before the suffix itself: positions 0 .. length - n - 1.
            windows = np.lib.stride_tricks.sliding_window_view(tokens[: length - 1], n)
            hits = np.flatnonzero((windows == suffix).all(axis=1))
            if hits.size:
                start = int(hits[-1]) + n  # the latest match: the most recent context
                return tokens[start : start + num_tokens].tolist()
        return []
