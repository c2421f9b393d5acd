"""BlockManager: ref counts, the free queue's reuse order and prefix-cache hits.

The stateful test drives random admit/allocate/compute/fork/free sequences over
a tiny cache with a two-token vocabulary, so prefixes collide constantly, and
checks the bookkeeping invariants plus a model of each block's contents: a
sequence handed a cached or forked block must find exactly the KV its own
tokens would have produced there.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from engine.block_manager import RELEASED, BlockManager, chain_hash

# The KV of position p depends on every token up to p, so that prefix is what a slot "holds".
Slot = tuple[int, ...] | None


@dataclass(eq=False)
class FakeSeq:
    """The fields the block manager reads, plus what the test tracks about them."""

    token_ids: list[int]
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)
    cache_root: int | None = None
    num_released_blocks: int = 0
    # Tokens the table must cover, and tokens whose KV has been written.
    allocated: int = 0
    computed: int = 0


def seq_of(tokens: list[int]) -> FakeSeq:
    return FakeSeq(list(tokens))


def run_prompt(bm: BlockManager, tokens: list[int]) -> FakeSeq:
    """Admit a prompt with its cached prefix, allocate it all and mark it computed."""
    seq = seq_of(tokens)
    bm.admit(seq, bm.find_cached_prefix(seq))
    bm.allocate(seq, len(tokens))
    bm.register_full_blocks(seq, len(tokens))
    return seq


def expected_hashes(tokens: list[int], block_size: int, count: int) -> list[int]:
    hashes: list[int] = []
    parent: int | None = None
    for i in range(count):
        parent = chain_hash(parent, tokens[i * block_size : (i + 1) * block_size])
        hashes.append(parent)
    return hashes


# --- stateful test ---------------------------------------------------------------------

# Prompts start with a cut of one of these, so full blocks (even of 16 tokens) often repeat.
BASES = ([0] * 64, [1] * 64, [0, 1] * 32)


def upto(lo: int, hi: int) -> st.SearchStrategy[int]:
    """A count in [lo, hi], often hi itself: whole prompts are what make blocks cacheable."""
    return st.just(hi) | st.integers(lo, hi)


class BlockManagerMachine(RuleBasedStateMachine):
    """Random lifecycles of sequences sharing one small paged cache."""

    bm: BlockManager
    live: list[FakeSeq]
    contents: dict[int, list[Slot]]

    @initialize(
        num_blocks=st.integers(4, 24),
        block_size=st.sampled_from([1, 2, 4, 16]),
        caching=st.booleans(),
        window=st.none() | st.integers(1, 8),
    )
    def setup(self, num_blocks: int, block_size: int, caching: bool, window: int | None) -> None:
        self.bm = BlockManager(num_blocks, block_size, enable_prefix_caching=caching, window=window)
        self.live = []
        self.contents = {b: [None] * block_size for b in range(num_blocks)}

    # -- helpers --

    def _fresh_blocks(self, seq: FakeSeq, before: int) -> None:
        """Blocks just handed out by allocate() hold nothing yet: their old KV is overwritten."""
        for block_id in seq.block_table[before:]:
            self.contents[block_id] = [None] * self.bm.block_size

    def _check_shared_contents(self, seq: FakeSeq, num_blocks: int) -> None:
        """A block taken from the cache or a parent must hold this sequence's own prefix KV."""
        bs = self.bm.block_size
        for i, block_id in enumerate(seq.block_table[:num_blocks]):
            if block_id == RELEASED:
                continue  # behind the window: never read again
            want = [tuple(seq.token_ids[: i * bs + j + 1]) for j in range(bs)]
            assert self.contents[block_id] == want, f"block {block_id} holds another prefix"

    def _allocate(self, seq: FakeSeq, num_tokens: int) -> None:
        need = self.bm.blocks_needed(seq, num_tokens)
        if not self.bm.can_allocate(need):
            return
        free_before, table_before = self.bm.num_free_blocks, len(seq.block_table)
        self.bm.allocate(seq, num_tokens)
        assert self.bm.num_free_blocks == free_before - need
        self._fresh_blocks(seq, table_before)
        seq.allocated = max(seq.allocated, num_tokens)

    # -- rules --

    @rule(data=st.data())
    def create(self, data: st.DataObject) -> None:
        bs = self.bm.block_size
        base = data.draw(st.sampled_from(BASES), label="base")
        cut = data.draw(st.integers(0, 3 * bs + 1), label="cut")
        tail = data.draw(st.lists(st.integers(0, 1), min_size=1, max_size=bs + 1), label="tail")
        seq = seq_of(base[:cut] + tail)
        length = len(seq.token_ids)
        hits = self.bm.find_cached_prefix(seq)
        assert len(hits) * bs <= length - 1, "the last token must always be computed"
        if not self.bm.enable_prefix_caching:
            assert hits == []
        cached_tokens = len(hits) * bs
        target = data.draw(upto(max(cached_tokens, 1), length), label="target")
        need = self.bm.blocks_needed_to_admit(seq, hits, target)
        if not self.bm.can_allocate(need):
            event("create: no room")
            return
        event(f"create: {min(len(hits), 2)}+ cached blocks")
        free_before = self.bm.num_free_blocks
        assert self.bm.admit(seq, hits) == cached_tokens
        self._check_shared_contents(seq, len(hits))
        self.bm.allocate(seq, target)
        assert self.bm.num_free_blocks == free_before - need, "blocks_needed_to_admit is off"
        self._fresh_blocks(seq, len(hits))
        seq.allocated, seq.computed = target, cached_tokens
        self.live.append(seq)

    @rule(data=st.data())
    def append_and_grow(self, data: st.DataObject) -> None:
        if not self.live:
            return
        seq = data.draw(st.sampled_from(self.live), label="seq")
        seq.token_ids += data.draw(st.lists(st.integers(0, 1), max_size=self.bm.block_size + 1))
        self._allocate(seq, data.draw(upto(seq.allocated, len(seq.token_ids)), label="target"))

    @rule(data=st.data())
    def compute(self, data: st.DataObject) -> None:
        """The model writes KV for the next tokens, then full blocks become findable."""
        if not self.live:
            return
        seq = data.draw(st.sampled_from(self.live), label="seq")
        end = data.draw(upto(seq.computed, min(seq.allocated, len(seq.token_ids))), label="end")
        bs = self.bm.block_size
        for pos in range(seq.computed, end):
            block_id = seq.block_table[pos // bs]
            block = self.bm.blocks[block_id]
            # Writing into a shared or registered block would corrupt someone else's KV.
            assert block.ref_count == 1 and block.hash is None
            self.contents[block_id][pos % bs] = tuple(seq.token_ids[: pos + 1])
        seq.computed = end
        self.bm.register_full_blocks(seq, end)
        if self.bm.enable_prefix_caching:
            assert len(seq.block_hashes) >= end // bs
        else:
            assert seq.block_hashes == [] and self.bm.cached == {}

    @rule(data=st.data())
    def fork(self, data: st.DataObject) -> None:
        """Like LLMEngine._fork: the child shares the parent's computed prompt prefix."""
        if not self.live:
            return
        parent = data.draw(st.sampled_from(self.live), label="parent")
        prompt_len = data.draw(st.integers(1, len(parent.token_ids)), label="prompt_len")
        num_tokens = data.draw(upto(0, min(parent.computed, prompt_len)), label="num_tokens")
        child = seq_of(parent.token_ids[:prompt_len])
        bs = self.bm.block_size
        if self.bm.window is not None:
            first_seen = max(0, num_tokens // bs * bs - self.bm.window + 1)
            if parent.num_released_blocks > first_seen // bs:
                # The parent gave back blocks the child's window needs: nothing shared,
                # the child computes its prompt itself.
                assert self.bm.fork(parent, child, num_tokens) == 0
                assert child.block_table == [] and child.num_released_blocks == 0
                event("fork: nothing shared, the child's window was given back")
                self.live.append(child)
                return
        refs_before = [b.ref_count for b in self.bm.blocks]
        shared = self.bm.fork(parent, child, num_tokens)
        event(f"fork: shared {min(shared // self.bm.block_size, 2)}+ blocks")
        assert shared == num_tokens // bs * bs, "only full blocks are shared"
        assert child.block_table == parent.block_table[: shared // bs]
        for block_id in child.block_table:
            if block_id != RELEASED:
                assert self.bm.blocks[block_id].ref_count == refs_before[block_id] + 1
        self._check_shared_contents(child, len(child.block_table))
        child.allocated = child.computed = shared
        self.live.append(child)

    @rule(data=st.data())
    def release_behind_window(self, data: st.DataObject) -> None:
        """As the scheduler does before each step: blocks behind every query's window go."""
        if not self.live:
            return
        seq = data.draw(st.sampled_from(self.live), label="seq")
        free_before = self.bm.num_free_blocks
        released = self.bm.release_behind_window(seq, seq.computed)
        window, bs = self.bm.window, self.bm.block_size
        if window is None:
            assert released == 0 and RELEASED not in seq.block_table
            return
        event(f"release: {min(released, 2)}+ blocks")
        behind = min(max(0, seq.computed - window + 1) // bs, len(seq.block_table))
        assert seq.block_table[:behind] == [RELEASED] * behind
        assert RELEASED not in seq.block_table[behind:]  # the window's blocks all stay
        assert self.bm.num_free_blocks >= free_before  # shared ones stay with their users
        assert self.bm.release_behind_window(seq, seq.computed) == 0  # idempotent

    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        if not self.live:
            return
        seq = data.draw(st.sampled_from(self.live), label="seq")
        self.live.remove(seq)
        self.bm.free(seq)
        assert seq.block_table == [] and seq.block_hashes == []
        self.bm.free(seq)  # freeing a freed sequence is a no-op, not a double free

    # -- invariants --

    @invariant()
    def ref_counts_match_tables(self) -> None:
        refs = Counter(b for seq in self.live for b in seq.block_table if b != RELEASED)
        for block in self.bm.blocks:
            assert block.ref_count == refs[block.block_id] >= 0
            assert (block.ref_count == 0) == (block.block_id in self.bm.free_queue)
        assert self.bm.num_free_blocks + len(refs) == self.bm.num_blocks

    @invariant()
    def tables_are_sane(self) -> None:
        bs = self.bm.block_size
        for seq in self.live:
            held = [b for b in seq.block_table if b != RELEASED]
            assert len(set(held)) == len(held)
            assert seq.block_table[: seq.num_released_blocks] == [RELEASED] * len(
                seq.block_table[: seq.num_released_blocks]
            )
            assert len(seq.block_table) == self.bm.blocks_for(seq.allocated)
            assert len(seq.block_hashes) <= len(seq.block_table)
            assert seq.block_hashes == expected_hashes(seq.token_ids, bs, len(seq.block_hashes))
            for block_id, h in zip(seq.block_table, seq.block_hashes, strict=False):
                if block_id != RELEASED:
                    assert self.bm.blocks[block_id].hash == h

    @invariant()
    def cache_index_is_consistent(self) -> None:
        for h, block_id in self.bm.cached.items():
            assert self.bm.blocks[block_id].hash == h
        assert len(set(self.bm.cached.values())) == len(self.bm.cached)

    @invariant()
    def unhashed_free_blocks_come_first(self) -> None:
        """Reusing an empty block costs nothing; evicting a cached one costs a future hit."""
        hashed = [self.bm.blocks[b].hash is not None for b in self.bm.free_queue]
        assert hashed == sorted(hashed)


BlockManagerMachine.TestCase.settings = settings(
    max_examples=400, stateful_step_count=50, deadline=None
)
TestBlockManagerMachine = BlockManagerMachine.TestCase


# --- prefix cache semantics ------------------------------------------------------------

PROMPT_40 = list(range(40))


def test_same_prompt_hits_its_full_blocks() -> None:
    bm = BlockManager(num_blocks=8, block_size=16)
    first = run_prompt(bm, PROMPT_40)
    second = seq_of(PROMPT_40)
    hits = bm.find_cached_prefix(second)
    assert hits == first.block_table[:2]
    # Both hit blocks are in use by `first`, so only the partial third block is new.
    assert bm.blocks_needed_to_admit(second, hits, 40) == 1
    assert bm.admit(second, hits) == 32
    bm.allocate(second, 40)
    assert second.block_table[:2] == first.block_table[:2]
    assert second.block_table[2] != first.block_table[2]
    assert [bm.blocks[b].ref_count for b in first.block_table] == [2, 2, 1]


def test_hit_stops_one_token_short_of_the_prompt() -> None:
    """A 32-token prompt whose two blocks are cached still recomputes its last block."""
    bm = BlockManager(num_blocks=8, block_size=16)
    run_prompt(bm, list(range(32)))
    assert len(bm.cached) == 2
    assert len(bm.find_cached_prefix(seq_of(list(range(32))))) == 1
    assert len(bm.find_cached_prefix(seq_of(list(range(33))))) == 2


def test_different_first_block_misses() -> None:
    bm = BlockManager(num_blocks=8, block_size=16)
    run_prompt(bm, PROMPT_40)
    assert bm.find_cached_prefix(seq_of([99, *PROMPT_40[1:]])) == []
    # A difference in the second block keeps the first block's hit.
    changed = list(PROMPT_40)
    changed[20] = 99
    assert len(bm.find_cached_prefix(seq_of(changed))) == 1


def test_hashes_are_chained() -> None:
    """Block 1's KV depends on block 0's tokens, so equal block-1 tokens alone never hit."""
    bm = BlockManager(num_blocks=8, block_size=4)
    shared_tail = [7, 7, 7, 7]
    run_prompt(bm, [1, 2, 3, 4, *shared_tail, 0])
    other = seq_of([5, 6, 7, 8, *shared_tail, 0])
    assert bm.find_cached_prefix(other) == []
    assert chain_hash(None, [1, 2, 3, 4]) != chain_hash(None, [5, 6, 7, 8])
    assert chain_hash(1, shared_tail) != chain_hash(2, shared_tail)


def test_parents_python_hashes_alike_chain_apart() -> None:
    """SHA-256, as vLLM's default: Python's int hash wraps at 2**61 - 1 and takes -1 for
    -2, so with `hash((parent, tokens))` these parents' blocks were one cache entry."""
    tokens = [3, 1, 4, 1]
    parent = 2**62 + 12345  # a block hash is 256 bits: above the wrap
    assert hash((parent, tuple(tokens))) == hash((parent - (2**61 - 1), tuple(tokens)))
    assert chain_hash(parent, tokens) != chain_hash(parent - (2**61 - 1), tokens)
    assert chain_hash(-1, tokens) != chain_hash(-2, tokens)
    assert chain_hash(None, tokens) != chain_hash(0, tokens)


def test_blocks_needed_to_admit_counts_revived_free_blocks() -> None:
    bm = BlockManager(num_blocks=4, block_size=4)
    first = run_prompt(bm, list(range(9)))
    bm.free(first)
    assert bm.num_free_blocks == 4
    second = seq_of(list(range(10)))
    hits = bm.find_cached_prefix(second)
    assert len(hits) == 2
    # Both hits sit in the free queue, so taking them costs as much as fresh blocks.
    assert bm.blocks_needed_to_admit(second, hits, 10) == 3
    bm.admit(second, hits)
    assert bm.num_free_blocks == 2
    assert bm.blocks_needed_to_admit(seq_of(list(range(10))), hits, 10) == 1


def test_freed_cached_blocks_are_reused_least_recently_freed_first() -> None:
    bm = BlockManager(num_blocks=4, block_size=2)
    a = run_prompt(bm, [0, 0, 0, 0])
    b = run_prompt(bm, [1, 1, 1, 1])
    bm.free(a)
    bm.free(b)
    # Tail first, so each prompt's first block outlives its second.
    a_blocks = [bm.cached[h] for h in expected_hashes([0, 0, 0, 0], 2, 2)]
    b_blocks = [bm.cached[h] for h in expected_hashes([1, 1, 1, 1], 2, 2)]
    assert list(bm.free_queue) == [a_blocks[1], a_blocks[0], b_blocks[1], b_blocks[0]]

    fresh = seq_of([5, 5])
    bm.allocate(fresh, 2)
    assert fresh.block_table == [a_blocks[1]]
    assert bm.blocks[a_blocks[1]].hash is None
    assert len(bm.cached) == 3, "reallocation evicts the block from the cache"
    assert len(bm.find_cached_prefix(seq_of([0, 0, 0, 0, 0]))) == 1
    bm.allocate(fresh, 4)
    assert fresh.block_table[1] == a_blocks[0]
    assert bm.find_cached_prefix(seq_of([0, 0, 0, 0, 0])) == []
    assert len(bm.find_cached_prefix(seq_of([1, 1, 1, 1, 1]))) == 2


def test_a_hit_refreshes_its_block_in_the_reuse_order() -> None:
    bm = BlockManager(num_blocks=4, block_size=2)
    a = run_prompt(bm, [0, 0, 0])  # one full cached block, one partial
    b = run_prompt(bm, [1, 1, 1])
    a_block, b_block = a.block_table[0], b.block_table[0]
    bm.free(a)
    bm.free(b)
    again = run_prompt(bm, [0, 0, 1])  # hits a_block and takes the one unhashed free block
    assert again.block_table[0] == a_block
    bm.free(again)
    # a_block was freed after b_block this time, so b_block goes first.
    hashed = [blk for blk in bm.free_queue if bm.blocks[blk].hash is not None]
    assert hashed == [b_block, a_block]


def test_blocks_without_a_hash_are_reused_before_cached_ones() -> None:
    bm = BlockManager(num_blocks=4, block_size=2)
    cached = run_prompt(bm, [0, 0, 0, 0])
    scratch = seq_of([1, 1, 1, 1])
    bm.allocate(scratch, 4)  # never computed, so never registered
    scratch_blocks = set(scratch.block_table)
    bm.free(cached)
    bm.free(scratch)  # freed later, yet reused first
    fresh = seq_of([2, 2, 2, 2])
    bm.allocate(fresh, 4)
    assert set(fresh.block_table) == scratch_blocks
    assert len(bm.find_cached_prefix(seq_of([0, 0, 0, 0, 0]))) == 2


def test_prefix_caching_off_never_hits() -> None:
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    first = run_prompt(bm, list(range(12)))
    assert first.block_hashes == [] and bm.cached == {}
    assert bm.find_cached_prefix(seq_of(list(range(12)))) == []


# --- fork, free, allocate --------------------------------------------------------------


@pytest.mark.parametrize(("num_tokens", "shared"), [(10, 8), (9, 8), (8, 8), (7, 4), (3, 0)])
def test_fork_shares_only_full_blocks(num_tokens: int, shared: int) -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    parent = run_prompt(bm, list(range(10)))  # blocks: 4 + 4 + 2
    child = seq_of(list(range(10)))
    assert bm.fork(parent, child, num_tokens) == shared
    n = shared // 4
    assert child.block_table == parent.block_table[:n]
    assert child.block_hashes == parent.block_hashes[:n]
    assert [bm.blocks[b].ref_count for b in parent.block_table] == [2] * n + [1] * (3 - n)
    bm.free(parent)
    assert bm.num_free_blocks == 8 - n, "the child keeps the shared blocks alive"
    bm.free(child)
    assert bm.num_free_blocks == 8


def test_fork_never_shares_a_partial_block() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    parent = run_prompt(bm, list(range(10)))  # blocks: 4 + 4 + 2
    child = seq_of(list(range(10)))
    shared = bm.fork(parent, child, 50)
    assert shared <= len(parent.token_ids)
    assert shared == 8 and child.block_table == parent.block_table[:2]


def test_fork_copying_tail_gives_the_child_a_fresh_copy_of_the_partial_block() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    parent = run_prompt(bm, list(range(10)))  # blocks: 4 + 4 + 2
    child = seq_of([*range(10), 99])
    computed, copy = bm.fork_copying_tail(parent, child, 10)
    assert computed == 10
    assert child.block_table[:2] == parent.block_table[:2]
    assert copy == (parent.block_table[2], child.block_table[2])
    assert child.block_table[2] not in parent.block_table
    assert [bm.blocks[b].ref_count for b in child.block_table] == [2, 2, 1]
    # Block-aligned: nothing partial to copy. No free block: shared full blocks only.
    assert bm.fork_copying_tail(parent, seq_of(list(range(10))), 8) == (8, None)
    full = BlockManager(num_blocks=3, block_size=4)
    parent = run_prompt(full, list(range(10)))
    assert full.fork_copying_tail(parent, seq_of(list(range(10))), 10) == (8, None)


def test_hand_over_moves_the_table_without_touching_counts() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    source = run_prompt(bm, list(range(10)))
    table, hashes = list(source.block_table), list(source.block_hashes)
    target = seq_of([*range(10), 7])
    bm.hand_over(source, target)
    assert (target.block_table, target.block_hashes) == (table, hashes)
    assert (source.block_table, source.block_hashes) == ([], [])
    assert [bm.blocks[b].ref_count for b in table] == [1, 1, 1]
    bm.free(source)  # nothing left to give back
    assert bm.num_free_blocks == 5


def test_fork_caps_at_the_parents_table() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    parent = seq_of(list(range(20)))
    bm.allocate(parent, 8)
    assert bm.fork(parent, seq_of(list(range(20))), 19) == 8


def test_free_twice_is_harmless() -> None:
    bm = BlockManager(num_blocks=4, block_size=4)
    seq = run_prompt(bm, list(range(6)))
    bm.free(seq)
    bm.free(seq)
    assert all(b.ref_count == 0 for b in bm.blocks)
    assert bm.num_free_blocks == 4


def test_free_detects_a_corrupted_table() -> None:
    bm = BlockManager(num_blocks=4, block_size=4)
    seq = run_prompt(bm, list(range(6)))
    stale = list(seq.block_table)
    bm.free(seq)
    seq.block_table[:] = stale
    with pytest.raises(RuntimeError, match="double free"):
        bm.free(seq)


def test_allocate_out_of_blocks_changes_nothing() -> None:
    bm = BlockManager(num_blocks=2, block_size=4)
    seq = seq_of(list(range(12)))
    assert bm.blocks_needed(seq, 12) == 3
    assert not bm.can_allocate(3)
    with pytest.raises(RuntimeError, match="out of KV blocks"):
        bm.allocate(seq, 12)
    assert seq.block_table == [] and bm.num_free_blocks == 2


def test_allocate_is_incremental() -> None:
    bm = BlockManager(num_blocks=4, block_size=4)
    seq = seq_of(list(range(16)))
    bm.allocate(seq, 3)
    bm.allocate(seq, 4)
    assert len(seq.block_table) == 1
    bm.allocate(seq, 5)
    assert len(seq.block_table) == 2
    assert bm.blocks_needed(seq, 2) == 0
    assert bm.usage == 0.5


def test_needs_at_least_one_block() -> None:
    with pytest.raises(ValueError, match="at least one block"):
        BlockManager(num_blocks=0, block_size=16)


def test_a_cache_root_keeps_equal_tokens_apart() -> None:
    """Sequences whose KV differs for the same tokens (LoRA adapters) never share blocks."""
    bm = BlockManager(num_blocks=8, block_size=4)
    tokens = list(range(9))
    first = FakeSeq(list(tokens), cache_root=11)
    bm.allocate(first, 9)
    bm.register_full_blocks(first, 9)
    assert bm.find_cached_prefix(FakeSeq(list(tokens), cache_root=12)) == []
    assert bm.find_cached_prefix(FakeSeq(list(tokens))) == []
    assert bm.find_cached_prefix(FakeSeq(list(tokens), cache_root=11)) == first.block_table[:2]
