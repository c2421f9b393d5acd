"""Continuous batching: decide, every step, which sequences compute how many tokens.

Each step has a token budget (`max_num_batched_tokens`) and a sequence cap
(`max_num_seqs`). Running sequences go first, decodes before prefill chunks,
so generation never stalls behind a long prompt; waiting sequences are then
admitted in priority order (lower value first, then arrival) with their
prompts cut into chunks that fit the remaining budget. When KV blocks run
out, waiting forked siblings (n > 1) give back the blocks they hold, then the
lowest-priority, newest running sequence is preempted: its blocks are freed
and it is recomputed later (its prefix may still be cached).

Background work (priority at or above `background_priority`: the worker marks
batch lines so) prefills at most `background_prefill_tokens` per step, and none
in a step that prefills foreground work. Without that a wave of new batch lines
fills the whole token budget: an interactive request arriving meanwhile waits
for that thousand-token step to end, and then shares its own prefill step with
more of them. The cap holds even when no interactive request is present, since
the next one may arrive mid-step; the background prompts cost the same compute,
spread over more (shorter) steps. Background decodes are never held back.

With `long_prefill_token_threshold` (vLLM's --long-prefill-token-threshold) no
sequence prefills more than that many tokens in a step, so the budget a long
prompt would take alone is left to others: a short prompt arriving behind three
long ones starts at the next step instead of after all three.

A decoding sequence with speculative drafts (engine/ngram_proposer.py) is
scheduled for 1 + drafts tokens. Drafts only use what is spare: the budget
left after one token for every decode still to come, and free blocks (they
never preempt), so speculation can slow no other sequence's progress.

An encoder's prompts (`whole_prompts`) are never chunked: each token attends
the ones after it, so a prompt is admitted whole or waits for a later step
(the engine makes the budget hold the longest one).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from engine.block_manager import BlockManager
from engine.sequence import Sequence, SequenceStatus


@dataclass(frozen=True)
class ScheduledSequence:
    seq: Sequence
    # Tokens computed this step, draft tokens included.
    num_tokens: int
    # Speculative tokens after the sequence's last one, verified this step.
    draft_token_ids: tuple[int, ...] = ()

    @property
    def samples(self) -> bool:
        """Whether this chunk reaches the end of the sequence, so a token is sampled."""
        real = self.num_tokens - len(self.draft_token_ids)
        return self.seq.num_computed_tokens + real == self.seq.num_tokens


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
    background_priority: int | None = None
    background_prefill_tokens: int = 256
    # vLLM's --long-prefill-token-threshold: no sequence prefills more than this per step
    # (0: off), so long prompts share steps and a short one admitted behind them starts.
    long_prefill_token_threshold: int = 0
    # An encoder's: each prompt is computed whole in one step (its tokens attend the
    # ones after them), never chunked; the budget must hold the longest prompt.
    whole_prompts: bool = False
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

    def waiting_sequences(self) -> list[Sequence]:
        """The sequences waiting now (the heap also holds finished ones, dropped lazily)."""
        return [seq for _, seq in self.waiting if seq.seq_id in self._waiting_ids]

    def has_unfinished(self) -> bool:
        return bool(self.running) or bool(self._waiting_ids)

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        heapq.heappush(self.waiting, (seq.sort_key(), seq))
        self._waiting_ids.add(seq.seq_id)

    def finish(
        self,
        seq: Sequence,
        reason: str,
        stop_reason: str | int | None = None,
        keep_blocks: bool = False,
    ) -> None:
        """End a sequence wherever it is (even never added) and give its blocks back,
        unless `keep_blocks`: then its owner frees them (engine/beam_requests.py)."""
        if seq.is_finished:
            return
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        self._waiting_ids.discard(seq.seq_id)
        if len(self.waiting) > 2 * len(self._waiting_ids) + 64:
            # Aborted waiting entries are dropped lazily; compact before they pile up.
            self.waiting = [e for e in self.waiting if e[1].seq_id in self._waiting_ids]
            heapq.heapify(self.waiting)
        if not keep_blocks:
            self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.stop_reason = stop_reason

    def is_background(self, seq: Sequence) -> bool:
        return self.background_priority is not None and seq.priority >= self.background_priority

    def _waiting_head(self) -> Sequence | None:
        """The first waiting sequence in priority order (stale heap entries dropped)."""
        while self.waiting and self.waiting[0][1].seq_id not in self._waiting_ids:
            heapq.heappop(self.waiting)
        return self.waiting[0][1] if self.waiting else None

    def schedule(self, now: float) -> SchedulerOutput:
        budget = self.max_num_batched_tokens
        background_left = (
            budget if self.background_priority is None else self.background_prefill_tokens
        )
        scheduled: dict[Sequence, ScheduledSequence] = {}
        background_chunks: dict[Sequence, int] = {}  # background prefill tokens scheduled
        foreground_prefill = False
        preempted: list[Sequence] = []
        pending = sorted(self.running, key=Sequence.sort_key)
        order = [s for s in pending if s.num_uncomputed_tokens == 1]
        order += [s for s in pending if s.num_uncomputed_tokens > 1]
        # Decodes still to schedule: each keeps one token of the budget from others' drafts.
        decodes_left = sum(1 for s in order if s.num_uncomputed_tokens == 1)
        for seq in order:
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted earlier in this step
            if budget == 0:
                break
            prefill = seq.num_uncomputed_tokens > 1
            if not prefill:
                decodes_left -= 1
            num_tokens = min(seq.num_uncomputed_tokens, budget)
            if prefill:
                num_tokens = self._long_prefill_cap(num_tokens)
            capped = prefill and self.is_background(seq)
            if capped:
                # Running prefills are in priority order: foreground ones came first.
                num_tokens = 0 if foreground_prefill else min(num_tokens, background_left)
                if num_tokens == 0:
                    continue
            target = seq.num_computed_tokens + num_tokens
            self.block_manager.release_behind_window(seq, seq.num_computed_tokens)
            while not self.block_manager.can_allocate(
                self.block_manager.blocks_needed(seq, target)
            ):
                # Forked siblings waiting to start hold blocks too; they let go first, or a
                # running sequence could preempt itself every step for want of them.
                if self._release_waiting_blocks(keep=None):
                    continue
                # The victim may already be scheduled this step (decodes go first):
                # un-schedule it so a higher-priority sequence is never the one starved.
                victim = max(self.running, key=Sequence.sort_key)
                if victim in scheduled:
                    budget += scheduled.pop(victim).num_tokens
                    background_left += background_chunks.pop(victim, 0)
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
            if seq.status is SequenceStatus.RUNNING:
                self.block_manager.allocate(seq, target)
                drafts = () if prefill else self._fit_drafts(seq, budget - 1 - decodes_left)
                num_tokens += len(drafts)
                scheduled[seq] = ScheduledSequence(seq, num_tokens, drafts)
                budget -= num_tokens
                if capped:
                    background_chunks[seq] = num_tokens
                    background_left -= num_tokens
                elif prefill:
                    foreground_prefill = True
        result = list(scheduled.values())
        if not preempted:
            admitted_foreground = self._admit_waiting(
                budget, 0 if foreground_prefill else background_left, result, now
            )
            if admitted_foreground and background_chunks:
                # A chat's prompt goes in this step: the batch lines' chunks wait for the next.
                result = [s for s in result if s.seq not in background_chunks]
        return SchedulerOutput(result, preempted)

    def _long_prefill_cap(self, num_tokens: int) -> int:
        threshold = self.long_prefill_token_threshold
        return min(num_tokens, threshold) if threshold > 0 else num_tokens

    def _fit_drafts(self, seq: Sequence, budget: int) -> tuple[int, ...]:
        """The sequence's drafts cut to `budget` tokens and to the free blocks, allocated.
        Speculation is a bonus: it never preempts anyone and never takes a decode's token."""
        drafts = seq.draft_token_ids[: max(0, budget)]
        bm = self.block_manager
        while drafts:
            target = seq.num_computed_tokens + 1 + len(drafts)
            if bm.can_allocate(bm.blocks_needed(seq, target)):
                bm.allocate(seq, target)
                break
            drafts = drafts[:-1]
        return tuple(drafts)

    def _admit_waiting(
        self, budget: int, background_left: int, scheduled: list[ScheduledSequence], now: float
    ) -> bool:
        """Admit waiting sequences in priority order; True if a foreground one got in."""
        bm = self.block_manager
        released = False
        admitted_foreground = False
        while budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self._waiting_head()
            if seq is None:
                break
            background = self.is_background(seq)
            if background and (background_left <= 0 or admitted_foreground):
                break  # the heap is in priority order: only background work is left
            forked = bool(seq.block_table)
            hits = [] if forked or seq.needs_every_prompt_row else bm.find_cached_prefix(seq)
            computed = seq.num_computed_tokens if forked else len(hits) * bm.block_size
            remaining = seq.num_tokens - computed
            if self.whole_prompts:
                # Whole or not at all (no long-prefill cap); a background prompt longer
                # than the background cap goes in a step that runs nothing else, so it
                # cannot wait forever.
                capped = background and remaining > background_left and bool(scheduled)
                if remaining > budget or capped:
                    break
                num_tokens = remaining
            else:
                num_tokens = self._long_prefill_cap(min(remaining, budget))
                if background:
                    num_tokens = min(num_tokens, background_left)
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
            if background:
                background_left -= num_tokens
            else:
                admitted_foreground = True
        return admitted_foreground

    def _release_waiting_blocks(self, keep: Sequence | None) -> bool:
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
