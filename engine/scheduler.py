"""Continuous batching: decide, every step, which sequences compute how many tokens.

Each step has a token budget (`max_num_batched_tokens`) and a sequence cap
(`max_num_seqs`). Running sequences go first, decodes before prefill chunks,
so generation never stalls behind a long prompt; waiting sequences are then
admitted in priority order (lower value first, then arrival) with their
prompts cut into chunks that fit the remaining budget. When KV blocks run
out, the lowest-priority, newest running sequence is preempted: its blocks
are freed and it is recomputed later (its prefix may still be cached).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from engine.block_manager import BlockManager
from engine.sequence import Sequence, SequenceStatus


@dataclass(frozen=True)
class ScheduledSequence:
    seq: Sequence
    num_tokens: int

    @property
    def samples(self) -> bool:
        """Whether this chunk reaches the end of the sequence, so a token is sampled."""
        return self.seq.num_computed_tokens + self.num_tokens == self.seq.num_tokens


@dataclass(frozen=True)
class SchedulerOutput:
    scheduled: list[ScheduledSequence]
    preempted: list[Sequence]

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)


@dataclass
class SchedulerStats:
    num_preemptions: int = 0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0


@dataclass
class Scheduler:
    block_manager: BlockManager
    max_num_seqs: int
    max_num_batched_tokens: int
    running: list[Sequence] = field(default_factory=list)
    waiting: list[tuple[tuple[int, float, int], Sequence]] = field(default_factory=list)
    stats: SchedulerStats = field(default_factory=SchedulerStats)
    # Ids of sequences really in the waiting heap (entries of finished ones are dropped lazily).
    _waiting_ids: set[int] = field(default_factory=set)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting_ids)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_unfinished(self) -> bool:
        return bool(self.running) or bool(self._waiting_ids)

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        heapq.heappush(self.waiting, (seq.sort_key(), seq))
        self._waiting_ids.add(seq.seq_id)

    def finish(self, seq: Sequence, reason: str, stop_reason: str | int | None = None) -> None:
        """End a sequence wherever it is (even never added) and give its blocks back."""
        if seq.is_finished:
            return
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        self._waiting_ids.discard(seq.seq_id)
        if len(self.waiting) > 2 * len(self._waiting_ids) + 64:
            # Aborted waiting entries are dropped lazily; compact before they pile up.
            self.waiting = [e for e in self.waiting if e[1].seq_id in self._waiting_ids]
            heapq.heapify(self.waiting)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.stop_reason = stop_reason

    def schedule(self, now: float) -> SchedulerOutput:
        budget = self.max_num_batched_tokens
        scheduled: dict[Sequence, ScheduledSequence] = {}
        preempted: list[Sequence] = []
        pending = sorted(self.running, key=Sequence.sort_key)
        order = [s for s in pending if s.num_uncomputed_tokens == 1]
        order += [s for s in pending if s.num_uncomputed_tokens > 1]
        for seq in order:
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted earlier in this step
            if budget == 0:
                break
            num_tokens = min(seq.num_uncomputed_tokens, budget)
            target = seq.num_computed_tokens + num_tokens
            while not self.block_manager.can_allocate(
                self.block_manager.blocks_needed(seq, target)
            ):
                # The victim may already be scheduled this step (decodes go first):
                # un-schedule it so a higher-priority sequence is never the one starved.
                victim = max(self.running, key=Sequence.sort_key)
                if victim in scheduled:
                    budget += scheduled.pop(victim).num_tokens
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
            if seq.status is SequenceStatus.RUNNING:
                self.block_manager.allocate(seq, target)
                scheduled[seq] = ScheduledSequence(seq, num_tokens)
                budget -= num_tokens
        result = list(scheduled.values())
        if not preempted:
            self._admit_waiting(budget, result, now)
        return SchedulerOutput(result, preempted)

    def _admit_waiting(self, budget: int, scheduled: list[ScheduledSequence], now: float) -> None:
        bm = self.block_manager
        released = False
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            _, seq = self.waiting[0]
            if seq.seq_id not in self._waiting_ids:
                heapq.heappop(self.waiting)
                continue
            forked = bool(seq.block_table)
            hits = [] if forked or seq.wants_prompt_logprobs else bm.find_cached_prefix(seq)
            computed = seq.num_computed_tokens if forked else len(hits) * bm.block_size
            num_tokens = min(seq.num_tokens - computed, budget)
            target = computed + num_tokens
            need = (
                bm.blocks_needed(seq, target)
                if forked
                else bm.blocks_needed_to_admit(seq, hits, target)
            )
            if not bm.can_allocate(need):
                # Forked siblings wait holding their shared prompt blocks; if the
                # head cannot fit, they must let go or the queue could block forever.
                if released or not self._release_waiting_blocks(keep=seq):
                    break
                released = True
                continue
            heapq.heappop(self.waiting)
            self._waiting_ids.discard(seq.seq_id)
            if not forked:
                bm.admit(seq, hits)
                seq.num_computed_tokens = computed
                self.stats.prefix_cache_queries += seq.num_tokens
                self.stats.prefix_cache_hits += computed
                if seq.num_preemptions == 0:
                    seq.num_cached_tokens = computed
            bm.allocate(seq, target)
            seq.status = SequenceStatus.RUNNING
            if seq.scheduled_time is None:
                seq.scheduled_time = now
            self.running.append(seq)
            scheduled.append(ScheduledSequence(seq, num_tokens))
            budget -= num_tokens

    def _release_waiting_blocks(self, keep: Sequence) -> bool:
        """Free the blocks of waiting sequences other than `keep`; True if any were freed."""
        freed = False
        for _, seq in self.waiting:
            if seq is not keep and seq.block_table and seq.seq_id in self._waiting_ids:
                self.block_manager.free(seq)
                seq.num_computed_tokens = 0
                freed = True
        return freed

    def _preempt(self, seq: Sequence) -> None:
        """Recompute-style preemption: drop the KV, keep the tokens, wait again."""
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        self.stats.num_preemptions += 1
        self.add(seq)
