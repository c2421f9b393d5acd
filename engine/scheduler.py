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
    _num_waiting: int = 0

    @property
    def num_waiting(self) -> int:
        return self._num_waiting

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_unfinished(self) -> bool:
        return bool(self.running) or self._num_waiting > 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        heapq.heappush(self.waiting, (seq.sort_key(), seq))
        self._num_waiting += 1

    def finish(self, seq: Sequence, reason: str, stop_reason: str | int | None = None) -> None:
        """End a sequence wherever it is and give its blocks back."""
        if seq.is_finished:
            return
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        else:
            # Waiting entries are dropped lazily when they reach the heap's top.
            self._num_waiting -= 1
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.stop_reason = stop_reason

    def schedule(self, now: float) -> SchedulerOutput:
        budget = self.max_num_batched_tokens
        scheduled: list[ScheduledSequence] = []
        preempted: list[Sequence] = []
        pending = sorted(self.running, key=Sequence.sort_key)
        order = [s for s in pending if s.num_uncomputed_tokens == 1]
        order += [s for s in pending if s.num_uncomputed_tokens > 1]
        unscheduled = set(order)
        for seq in order:
            if seq not in unscheduled:
                continue  # preempted earlier in this step
            if budget == 0:
                break
            num_tokens = min(seq.num_uncomputed_tokens, budget)
            target = seq.num_computed_tokens + num_tokens
            while not self.block_manager.can_allocate(
                self.block_manager.blocks_needed(seq, target)
            ):
                victim = max(unscheduled, key=Sequence.sort_key)
                self._preempt(victim)
                unscheduled.discard(victim)
                preempted.append(victim)
                if victim is seq:
                    break
            if seq in unscheduled:
                self.block_manager.allocate(seq, target)
                scheduled.append(ScheduledSequence(seq, num_tokens))
                unscheduled.discard(seq)
                budget -= num_tokens
        if not preempted:
            budget = self._admit_waiting(budget, scheduled, now)
        return SchedulerOutput(scheduled, preempted)

    def _admit_waiting(self, budget: int, scheduled: list[ScheduledSequence], now: float) -> int:
        bm = self.block_manager
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            _, seq = self.waiting[0]
            if seq.is_finished:
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
                break
            heapq.heappop(self.waiting)
            self._num_waiting -= 1
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
        return budget

    def _preempt(self, seq: Sequence) -> None:
        """Recompute-style preemption: drop the KV, keep the tokens, wait again."""
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        self.stats.num_preemptions += 1
        self.add(seq)
