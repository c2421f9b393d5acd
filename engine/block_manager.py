"""The paged KV cache's bookkeeping: which block holds which tokens, and who uses it.

Blocks are reference counted so sequences can share them (n > 1 forks and
prefix-cache hits). With prefix caching on, every full block is registered
under a hash chained from its predecessor's, so two prompts that share a
prefix share its blocks. A block whose count drops to zero keeps its cached
contents and joins the free queue; blocks are reused least-recently-freed
first, which evicts cold prefixes before warm ones.

In a model whose every layer attends through a sliding window (Mistral v0.1,
Phi-3-mini), a block wholly behind the window of the sequence's next query is
never read again: it is given back at once (`release_behind_window`), keeping
its cached prefix for other prompts, and its table entry becomes RELEASED. So
a long generation holds about window + chunk tokens of KV, not its whole
context. The kernels never read below the window (kernels/attention.py).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Protocol

# A block-table entry given back behind a sliding window: its tokens are never read again.
RELEASED = -1


class BlockOwner(Protocol):
    """What the block manager needs to know about a sequence."""

    token_ids: list[int]
    block_table: list[int]
    block_hashes: list[int]
    num_released_blocks: int
    # The hash the first block chains from: None, or what sets this sequence's KV apart
    # (a LoRA adapter) so equal tokens under it never share blocks with other sequences.
    cache_root: int | None


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None


def chain_hash(parent: int | None, tokens: Seq[int]) -> int:
    """The prefix-cache key of a full block: its tokens plus everything before them.

    SHA-256 (whole, as an int), as vLLM's default `--prefix-caching-hash-algo` is:
    Python's tuple hash of ints is neither secret nor collision-resistant, so a
    crafted prompt could be made to hash like another's block and be served its KV
    (vLLM's CVE-2025-25183). ~3 µs a block, against a forward pass's milliseconds.
    """
    digest = hashlib.sha256()
    if parent is not None:  # a block's hash (256 bits) or a cache root (a 64-bit hash())
        digest.update(parent.to_bytes(33, "big", signed=True))
    digest.update(array("q", tokens).tobytes())
    return int.from_bytes(digest.digest(), "big")


@dataclass
class BlockManager:
    num_blocks: int
    block_size: int
    enable_prefix_caching: bool = True
    # The attention window of every layer, where all of them slide (None: some attend to
    # the whole context, so every block stays until the sequence ends).
    window: int | None = None
    blocks: list[Block] = field(init=False)
    # Free blocks in reuse order (least recently freed first); values unused.
    free_queue: OrderedDict[int, None] = field(init=False)
    cached: dict[int, int] = field(init=False)

    def __post_init__(self) -> None:
        if self.num_blocks < 1:
            raise ValueError("the KV cache needs at least one block")
        self.blocks = [Block(i) for i in range(self.num_blocks)]
        self.free_queue = OrderedDict.fromkeys(range(self.num_blocks))
        self.cached = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    @property
    def usage(self) -> float:
        """Fraction of blocks referenced by live sequences (vLLM's kv_cache_usage_perc)."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # --- prefix cache -----------------------------------------------------------------

    def find_cached_prefix(self, seq: BlockOwner) -> list[int]:
        """Block ids holding the longest cached prefix of `seq`'s tokens.

        At most `len(token_ids) - 1` tokens are taken from the cache: the last
        token must be computed so the step yields logits to sample from.
        """
        if not self.enable_prefix_caching:
            return []
        hits: list[int] = []
        parent = seq.cache_root
        usable = (len(seq.token_ids) - 1) // self.block_size
        for i in range(usable):
            h = chain_hash(parent, seq.token_ids[i * self.block_size : (i + 1) * self.block_size])
            block_id = self.cached.get(h)
            if block_id is None:
                break
            hits.append(block_id)
            parent = h
        return hits

    def blocks_needed_to_admit(self, seq: BlockOwner, hits: list[int], num_tokens: int) -> int:
        """Free blocks consumed by admitting `seq` with `hits` and computing up to `num_tokens`.

        Hit blocks that nobody references sit in the free queue, so taking them
        costs a free block just like a fresh allocation does.
        """
        fresh = max(0, self.blocks_for(num_tokens) - len(hits))
        behind = self._blocks_behind(len(hits) * self.block_size)
        revived = sum(1 for b in hits[behind:] if self.blocks[b].ref_count == 0)
        return fresh + revived

    def admit(self, seq: BlockOwner, hits: list[int]) -> int:
        """Give a sequence with an empty table its cached prefix; returns cached tokens.
        Hit blocks already behind its window are not taken at all (RELEASED)."""
        assert not seq.block_table, "admit() is for sequences without blocks"
        behind = self._blocks_behind(len(hits) * self.block_size)
        for i, block_id in enumerate(hits):
            if i < behind:
                seq.block_table.append(RELEASED)
            else:
                self._acquire(block_id)
                seq.block_table.append(block_id)
            seq.block_hashes.append(self.blocks[block_id].hash)  # type: ignore[arg-type]
        seq.num_released_blocks = behind
        return len(hits) * self.block_size

    # --- allocation -------------------------------------------------------------------

    def blocks_needed(self, seq: BlockOwner, num_tokens: int) -> int:
        """New blocks `seq` needs so its table covers its first `num_tokens` tokens."""
        return max(0, self.blocks_for(num_tokens) - len(seq.block_table))

    def can_allocate(self, num_blocks: int) -> bool:
        return num_blocks <= self.num_free_blocks

    def allocate(self, seq: BlockOwner, num_tokens: int) -> None:
        """Grow `seq`'s table to cover `num_tokens` tokens; caller checked `can_allocate`."""
        needed = self.blocks_needed(seq, num_tokens)
        if needed > self.num_free_blocks:
            raise RuntimeError(f"out of KV blocks: need {needed}, have {self.num_free_blocks}")
        for _ in range(needed):
            block_id, _ = self.free_queue.popitem(last=False)
            block = self.blocks[block_id]
            if block.hash is not None:
                # Evict: the block's old contents are about to be overwritten.
                if self.cached.get(block.hash) == block_id:
                    del self.cached[block.hash]
                block.hash = None
            block.ref_count = 1
            seq.block_table.append(block_id)

    def register_full_blocks(self, seq: BlockOwner, num_computed_tokens: int) -> None:
        """Make blocks whose every token's KV is now computed findable by later prompts."""
        if not self.enable_prefix_caching:
            return
        full = min(num_computed_tokens, len(seq.token_ids)) // self.block_size
        parent = seq.block_hashes[-1] if seq.block_hashes else seq.cache_root
        for i in range(len(seq.block_hashes), full):
            tokens = seq.token_ids[i * self.block_size : (i + 1) * self.block_size]
            h = chain_hash(parent, tokens)
            block = self.blocks[seq.block_table[i]]
            if block.hash is None:
                block.hash = h
                # First writer wins; a duplicate block stays private to its sequence.
                self.cached.setdefault(h, block.block_id)
            seq.block_hashes.append(h)
            parent = h

    def release_behind_window(self, seq: BlockOwner, num_computed_tokens: int) -> int:
        """Give back the blocks no query from position `num_computed_tokens` on can see
        (those wholly before its window); returns how many were given back."""
        behind = min(self._blocks_behind(num_computed_tokens), len(seq.block_table))
        released = 0
        for i in range(seq.num_released_blocks, behind):
            self._release(seq.block_table[i])
            seq.block_table[i] = RELEASED
            released += 1
        seq.num_released_blocks = max(seq.num_released_blocks, behind)
        return released

    def _blocks_behind(self, num_computed_tokens: int) -> int:
        """Leading blocks wholly before the window of a query at `num_computed_tokens`."""
        if self.window is None:
            return 0
        return max(0, num_computed_tokens - self.window + 1) // self.block_size

    def fork(self, parent: BlockOwner, child: BlockOwner, num_tokens: int) -> int:
        """Share `parent`'s full blocks covering up to `num_tokens` tokens with `child`.

        Returns how many tokens the child now has computed. The partial last
        block is not shared: the child recomputes those few tokens itself,
        which avoids copy-on-write entirely.
        """
        assert not child.block_table, "fork() is for sequences without blocks"
        limit = min(num_tokens, len(parent.token_ids), len(parent.block_table) * self.block_size)
        shared = limit // self.block_size
        if parent.num_released_blocks > self._blocks_behind(shared * self.block_size):
            # The parent's last prompt chunk moved its window past the start of the
            # child's: the child computes its prompt itself (the prefix cache may help).
            return 0
        for block_id in parent.block_table[:shared]:
            if block_id != RELEASED:  # behind the window: the child never reads it either
                self._acquire(block_id)
            child.block_table.append(block_id)
        child.block_hashes.extend(parent.block_hashes[:shared])
        child.num_released_blocks = min(parent.num_released_blocks, shared)
        return shared * self.block_size

    def fork_copying_tail(
        self, parent: BlockOwner, child: BlockOwner, num_tokens: int
    ) -> tuple[int, tuple[int, int] | None]:
        """`fork`, and the parent's partial last block as a fresh block of the child's:
        returns the tokens the child now has computed and the (source, target) blocks
        whose KV the caller must copy before either sequence computes again. Where that
        cannot be done (no free block, a window moved past), as `fork`."""
        computed = self.fork(parent, child, num_tokens)
        full = len(child.block_table)
        limit = min(num_tokens, len(parent.token_ids))
        if (
            computed != full * self.block_size
            or computed >= limit
            or self.blocks_for(limit) != full + 1
            or full >= len(parent.block_table)
            or parent.block_table[full] == RELEASED
            or not self.can_allocate(1)
        ):
            return computed, None
        self.allocate(child, limit)
        return limit, (parent.block_table[full], child.block_table[full])

    def hand_over(self, source: BlockOwner, target: BlockOwner) -> None:
        """Move `source`'s whole table (references, hashes, released entries) to `target`,
        which has none: no count changes, and `source` is left without blocks."""
        assert not target.block_table, "hand_over() is for sequences without blocks"
        target.block_table, source.block_table = source.block_table, []
        target.block_hashes, source.block_hashes = source.block_hashes, []
        target.num_released_blocks, source.num_released_blocks = source.num_released_blocks, 0

    def free(self, seq: BlockOwner) -> None:
        """Release all of `seq`'s blocks, tail first so a prefix outlives its suffix."""
        for block_id in reversed(seq.block_table):
            if block_id != RELEASED:
                self._release(block_id)
        seq.block_table.clear()
        seq.block_hashes.clear()
        seq.num_released_blocks = 0

    def _release(self, block_id: int) -> None:
        """Drop one reference; an unreferenced block joins the free queue, at its end if
        it holds a findable cached prefix, at its front (reused first) if not."""
        block = self.blocks[block_id]
        if block.ref_count <= 0:
            raise RuntimeError(f"double free of block {block_id}")
        block.ref_count -= 1
        if block.ref_count == 0:
            self.free_queue[block_id] = None
            if block.hash is not None and self.cached.get(block.hash) != block_id:
                # A duplicate of a block someone else registered first: unfindable.
                block.hash = None
            if block.hash is None:
                # Nothing worth keeping: reuse it before any cached block.
                self.free_queue.move_to_end(block_id, last=False)

    def _acquire(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free_queue[block_id]
        block.ref_count += 1

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix (blocks in use keep their contents)."""
        for block in self.blocks:
            block.hash = None
        self.cached.clear()
