"""Prompt-lookup drafts: the tokens that followed the latest earlier occurrence of the
sequence's last n tokens (n from `prompt_lookup_max` down to `prompt_lookup_min`).

Numpy, not a Python loop, over a per-sequence array that grows with the
sequence (converting the whole token list each step would cost more than the
search): tens of microseconds per sequence at 4k tokens on this project's CPU.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import numpy as np


class NgramProposer:
    def __init__(self, lookup_min: int, lookup_max: int) -> None:
        self.lookup_min = lookup_min
        self.lookup_max = lookup_max
        # Each live sequence's tokens as an array with room to grow; gone with the sequence.
        self._arrays: weakref.WeakKeyDictionary[object, tuple[np.ndarray, int]] = (
            weakref.WeakKeyDictionary()
        )

    def propose(
        self, token_ids: Sequence[int], num_tokens: int, owner: object | None = None
    ) -> list[int]:
        """Up to `num_tokens` drafts for what follows `token_ids`; [] if nothing matches.
        `owner` (the sequence) keeps its array between calls; its tokens only grow."""
        length = len(token_ids)
        if num_tokens < 1 or length < self.lookup_min + 1:
            return []
        tokens = self._array(token_ids, owner)
        # Where an earlier match could end: the last token again, before the end. One
        # pass over the sequence; the longer suffixes are then checked there only.
        ends = np.flatnonzero(tokens[: length - 1] == tokens[length - 1])
        for n in range(min(self.lookup_max, length - 1), self.lookup_min - 1, -1):
            candidates = ends[ends >= n - 1]
            for back in range(1, n):
                if not candidates.size:
                    break
                candidates = candidates[tokens[candidates - back] == tokens[length - 1 - back]]
            if candidates.size:
                start = int(candidates[-1]) + 1  # the latest match: the most recent context
                return tokens[start : start + num_tokens].tolist()
        return []

    def _array(self, token_ids: Sequence[int], owner: object | None) -> np.ndarray:
        length = len(token_ids)
        if owner is None:
            return np.asarray(token_ids, dtype=np.int64)
        buffer, filled = self._arrays.get(owner, (np.empty(0, dtype=np.int64), 0))
        if filled > length:  # not the same sequence after all: start over
            filled = 0
        if length > buffer.size:
            grown = np.empty(max(2 * buffer.size, length, 256), dtype=np.int64)
            grown[:filled] = buffer[:filled]
            buffer = grown
        if length > filled:
            buffer[filled:length] = token_ids[filled:length]
        self._arrays[owner] = (buffer, length)
        return buffer[:length]
