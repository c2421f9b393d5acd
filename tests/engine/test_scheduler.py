"""Scheduler: budgets, chunked prefill, ordering, preemption and liveness.

The model is simulated the way LLMEngine._postprocess drives the scheduler:
each scheduled chunk advances `num_computed_tokens`, registers full blocks, and
a chunk that reaches the end of the sequence appends one sampled token.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field

from hypothesis import event, given, settings
from hypothesis import strategies as st

from engine.block_manager import BlockManager
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler, SchedulerOutput
from engine.sequence import Sequence, SequenceStatus

_request_ids = itertools.count()


def make_seq(
    prompt: int | list[int], *, priority: int = 0, arrival: float = 0.0, max_tokens: int = 1
) -> Sequence:
    tokens = list(range(prompt)) if isinstance(prompt, int) else list(prompt)
    return Sequence(
        request_id=f"req-{next(_request_ids)}",
        index=0,
        prompt_token_ids=tokens,
        params=SamplingParams(max_tokens=max_tokens),
        priority=priority,
        arrival_time=arrival,
        detokenizer=None,  # type: ignore[arg-type]  # the scheduler never detokenizes
    )


def make_scheduler(
    num_blocks: int = 64,
    block_size: int = 16,
    *,
    max_num_seqs: int = 8,
    max_num_batched_tokens: int = 512,
    enable_prefix_caching: bool = True,
    background_priority: int | None = None,
    background_prefill_tokens: int = 256,
    long_prefill_token_threshold: int = 0,
    whole_prompts: bool = False,
) -> Scheduler:
    bm = BlockManager(num_blocks, block_size, enable_prefix_caching)
    return Scheduler(
        bm,
        max_num_seqs,
        max_num_batched_tokens,
        background_priority=background_priority,
        background_prefill_tokens=background_prefill_tokens,
        long_prefill_token_threshold=long_prefill_token_threshold,
        whole_prompts=whole_prompts,
    )


@dataclass
class SimEngine:
    """The part of LLMEngine that feeds the scheduler: compute, register, sample, finish."""

    sched: Scheduler
    now: float = 0.0
    plans: list[SchedulerOutput] = field(default_factory=list)
    # (block, slot) -> the token prefix whose KV that slot holds; a cached or forked block
    # must hold exactly the prefix of the sequence that reuses it.
    kv: dict[tuple[int, int], tuple[int, ...]] = field(default_factory=dict)

    @property
    def bm(self) -> BlockManager:
        return self.sched.block_manager

    def step(self) -> SchedulerOutput:
        self.now += 1.0
        plan = self.sched.schedule(self.now)
        self.plans.append(plan)
        for item in plan.scheduled:
            self._run_model(item.seq, item.num_tokens)
            seq = item.seq
            samples = item.samples  # decided before the chunk counts as computed
            seq.num_computed_tokens += item.num_tokens
            self.bm.register_full_blocks(seq, seq.num_computed_tokens)
            if samples:
                seq.token_ids.append(seq.num_tokens % 3)
                limit = seq.params.max_tokens
                if limit is not None and seq.num_output_tokens >= limit:
                    self.sched.finish(seq, "length")
        return plan

    def _run_model(self, seq: Sequence, num_tokens: int) -> None:
        """Read the KV of every computed token, then write the chunk's KV."""
        bs = self.bm.block_size
        start, end = seq.num_computed_tokens, seq.num_computed_tokens + num_tokens
        assert len(seq.block_table) * bs >= end, "the table must cover the chunk"
        for pos in range(start):
            slot = (seq.block_table[pos // bs], pos % bs)
            assert self.kv.get(slot) == tuple(seq.token_ids[: pos + 1]), f"stale KV at {pos}"
        for pos in range(start, end):
            block = self.bm.blocks[seq.block_table[pos // bs]]
            assert block.ref_count == 1 and block.hash is None, "write into a shared block"
            self.kv[block.block_id, pos % bs] = tuple(seq.token_ids[: pos + 1])

    def run(self, max_steps: int = 1000) -> int:
        """Step until nothing is left; returns the number of steps."""
        for n in range(max_steps):
            if not self.sched.has_unfinished():
                return n
            self.step()
        raise AssertionError(f"still unfinished after {max_steps} steps")


def chunks(engine: SimEngine, seq: Sequence) -> list[int]:
    """How many tokens `seq` got in each step so far (0 where it was not scheduled)."""
    return [
        next((s.num_tokens for s in plan.scheduled if s.seq is seq), 0) for plan in engine.plans
    ]


def assert_all_blocks_free(bm: BlockManager) -> None:
    assert bm.num_free_blocks == bm.num_blocks
    assert all(b.ref_count == 0 for b in bm.blocks)


# --- budgets and chunked prefill -------------------------------------------------------


def test_chunked_prefill_splits_a_long_prompt() -> None:
    sched = make_scheduler(max_num_batched_tokens=32)
    engine = SimEngine(sched)
    seq = make_seq(100, max_tokens=3)
    sched.add(seq)
    computed = []
    for _ in range(4):
        engine.step()
        computed.append(seq.num_computed_tokens)
    assert chunks(engine, seq) == [32, 32, 32, 4]
    assert computed == [32, 64, 96, 100]
    assert seq.num_tokens == 101, "only the last chunk samples"
    engine.run()
    assert chunks(engine, seq)[4:] == [1, 1]
    assert seq.is_finished and seq.num_output_tokens == 3
    assert_all_blocks_free(sched.block_manager)


def test_a_short_prompt_behind_long_ones_starts_at_once_with_the_threshold() -> None:
    """vLLM's --long-prefill-token-threshold: no sequence prefills more than it per step,
    so long prompts share the budget and leave room; a short prompt arriving behind three
    of them starts in the next step, where without the threshold it waits for all three."""

    def first_step_of(short_after: int, threshold: int) -> int:
        sched = make_scheduler(
            num_blocks=256, max_num_batched_tokens=64, long_prefill_token_threshold=threshold
        )
        engine = SimEngine(sched)
        longs = [make_seq(300, arrival=float(i)) for i in range(3)]
        for seq in longs:
            sched.add(seq)
        for _ in range(short_after):
            engine.step()
        short = make_seq(10, arrival=10.0)
        sched.add(short)
        engine.run()
        assert all(seq.is_finished for seq in [*longs, short])
        assert_all_blocks_free(sched.block_manager)
        if threshold:
            assert all(max(chunks(engine, seq)) <= threshold for seq in longs)
        return next(i for i, n in enumerate(chunks(engine, short)) if n)

    assert first_step_of(1, threshold=16) == 1  # the step after it arrived
    assert first_step_of(1, threshold=0) >= 4  # until the first long prompt is in


def test_samples_only_on_the_last_chunk() -> None:
    sched = make_scheduler(max_num_batched_tokens=32)
    seq = make_seq(40)
    sched.add(seq)
    first = sched.schedule(0.0).scheduled[0]
    assert first.num_tokens == 32 and not first.samples
    seq.num_computed_tokens += first.num_tokens
    second = sched.schedule(1.0).scheduled[0]
    assert second.num_tokens == 8 and second.samples


def test_token_budget_and_max_num_seqs() -> None:
    sched = make_scheduler(max_num_seqs=3, max_num_batched_tokens=20)
    engine = SimEngine(sched)
    seqs = [make_seq(n, arrival=float(i), max_tokens=4) for i, n in enumerate([5, 30, 7, 12, 1])]
    for seq in seqs:
        sched.add(seq)
    first = engine.step()
    # 5 + 15 fills the budget; the third sequence would get no tokens this step.
    assert [(s.seq, s.num_tokens) for s in first.scheduled] == [(seqs[0], 5), (seqs[1], 15)]
    engine.run()
    for plan in engine.plans:
        assert plan.num_batched_tokens <= 20
        assert 0 < len(plan.scheduled) <= 3
        assert len({s.seq for s in plan.scheduled}) == len(plan.scheduled)
    assert all(s.is_finished and s.num_output_tokens == 4 for s in seqs)
    assert_all_blocks_free(sched.block_manager)


def test_max_num_seqs_holds_back_admission() -> None:
    sched = make_scheduler(max_num_seqs=2)
    seqs = [make_seq(4, arrival=float(i)) for i in range(3)]
    for seq in seqs:
        sched.add(seq)
    plan = sched.schedule(0.0)
    assert [s.seq for s in plan.scheduled] == seqs[:2]
    assert sched.num_running == 2 and sched.num_waiting == 1
    assert seqs[2].status is SequenceStatus.WAITING and seqs[2].block_table == []


def test_prefix_hit_skips_cached_tokens() -> None:
    sched = make_scheduler(block_size=16)
    engine = SimEngine(sched)
    first = make_seq(40)
    sched.add(first)
    engine.run()
    second = make_seq(40)
    sched.add(second)
    plan = engine.step()
    assert plan.scheduled[0].num_tokens == 8, "two 16-token blocks came from the cache"
    assert second.num_cached_tokens == 32
    assert sched.stats.prefix_cache_hits == 32 and sched.stats.prefix_cache_queries == 80


def test_hit_on_blocks_in_use_needs_only_fresh_blocks() -> None:
    """A prompt sharing a running sequence's prefix fits where a full copy would not."""
    sched = make_scheduler(num_blocks=4, block_size=4)
    engine = SimEngine(sched)
    running = make_seq([*range(8), 50], max_tokens=3)
    sched.add(running)
    engine.step()  # 3 blocks, the first two registered
    sibling = make_seq([*range(8), 60], max_tokens=3)
    sched.add(sibling)
    plan = engine.step()
    assert [(s.seq, s.num_tokens) for s in plan.scheduled] == [(running, 1), (sibling, 1)]
    assert sibling.block_table[:2] == running.block_table[:2]
    assert sched.block_manager.num_free_blocks == 0


# --- ordering --------------------------------------------------------------------------


def test_running_decodes_come_before_new_prefills() -> None:
    sched = make_scheduler(max_num_batched_tokens=32)
    engine = SimEngine(sched)
    decoding = make_seq(4, max_tokens=5)
    sched.add(decoding)
    engine.step()  # prefill; now it decodes
    prompt = make_seq(100, priority=-5)  # higher priority, yet still behind the decode
    sched.add(prompt)
    plan = engine.step()
    assert [(s.seq, s.num_tokens) for s in plan.scheduled] == [(decoding, 1), (prompt, 31)]


def test_running_decodes_come_before_running_prefill_chunks() -> None:
    sched = make_scheduler(max_num_batched_tokens=16)
    engine = SimEngine(sched)
    short = make_seq(4, arrival=1.0, max_tokens=5)
    long = make_seq(100, arrival=0.0)  # older, so it sorts first among running sequences
    sched.add(short)
    engine.step()
    sched.add(long)
    engine.step()  # long's first chunk
    plan = engine.step()
    assert [(s.seq, s.num_tokens) for s in plan.scheduled] == [(short, 1), (long, 15)]


def test_waiting_admitted_by_priority_then_arrival() -> None:
    sched = make_scheduler(max_num_seqs=1)
    engine = SimEngine(sched)
    late_urgent = make_seq(4, priority=0, arrival=9.0)
    early = make_seq(4, priority=1, arrival=1.0)
    earliest = make_seq(4, priority=1, arrival=0.0)
    lazy = make_seq(4, priority=2, arrival=0.0)
    for seq in (lazy, early, late_urgent, earliest):
        sched.add(seq)
    engine.run()
    first_steps = [
        next(i for i, n in enumerate(chunks(engine, s)) if n)
        for s in (late_urgent, earliest, early, lazy)
    ]
    assert first_steps == sorted(set(first_steps))
    assert all(seq.scheduled_time is not None for seq in (late_urgent, early, earliest, lazy))


# --- background work (batch lines) ------------------------------------------------------

BACKGROUND = 100


def background_scheduler(budget: int, cap: int) -> tuple[Scheduler, SimEngine]:
    """Priorities from BACKGROUND up are background work, prefilling `cap` tokens a step."""
    sched = make_scheduler(
        num_blocks=128,
        max_num_batched_tokens=budget,
        background_priority=BACKGROUND,
        background_prefill_tokens=cap,
    )
    return sched, SimEngine(sched)


def background_tokens(plan: SchedulerOutput) -> int:
    return sum(s.num_tokens for s in plan.scheduled if s.seq.priority >= BACKGROUND)


def test_background_prefill_is_capped_every_step() -> None:
    sched, engine = background_scheduler(budget=64, cap=8)
    batch = [make_seq(20, priority=BACKGROUND + i, arrival=0.0, max_tokens=2) for i in range(3)]
    for seq in batch:
        sched.add(seq)
    # Alone too: the next chat may arrive while this step runs.
    assert background_tokens(engine.step()) == 8
    chat = make_seq(10, priority=0, arrival=1.0, max_tokens=4)
    sched.add(chat)
    first = engine.step()
    # The chat's whole prompt goes in at once; the batch lines' prefill waits a step.
    assert [(s.seq, s.num_tokens) for s in first.scheduled] == [(chat, 10)]
    assert background_tokens(engine.step()) == 8
    engine.run()
    assert all(s.num_output_tokens == 2 for s in batch) and chat.num_output_tokens == 4
    # 60 prompt tokens at 8 a step: no step ever carried more.
    assert all(
        sum(s.num_tokens for s in plan.scheduled if s.seq in batch and s.num_tokens > 1) <= 8
        for plan in engine.plans
    )


def test_foreground_prefill_is_not_capped() -> None:
    sched, engine = background_scheduler(budget=64, cap=8)
    chats = [make_seq(20, priority=BACKGROUND - 1, arrival=float(i)) for i in range(3)]
    for seq in chats:
        sched.add(seq)
    assert engine.step().num_batched_tokens == 60


def test_a_chat_prefill_step_carries_no_background_prefill() -> None:
    sched, engine = background_scheduler(budget=32, cap=4)
    line = make_seq(100, priority=BACKGROUND)
    sched.add(line)
    assert engine.step().scheduled[0].num_tokens == 4
    chat = make_seq(12, priority=0, arrival=5.0, max_tokens=3)
    sched.add(chat)
    assert [(s.seq, s.num_tokens) for s in engine.step().scheduled] == [(chat, 12)]
    # Then the line goes on beside the chat's decodes.
    assert [(s.seq, s.num_tokens) for s in engine.step().scheduled] == [(chat, 1), (line, 4)]


def test_background_decodes_are_never_capped() -> None:
    sched, engine = background_scheduler(budget=64, cap=2)
    lines = [make_seq(2, priority=BACKGROUND, arrival=float(i), max_tokens=9) for i in range(4)]
    for seq in lines:
        sched.add(seq)
    for _ in range(4):  # one 2-token prompt a step
        engine.step()
    assert all(s.num_uncomputed_tokens == 1 for s in lines)
    sched.add(make_seq(40, priority=0, arrival=9.0, max_tokens=2))
    # Four background decodes, more than the cap of 2: decodes are never held back.
    assert sorted(s.num_tokens for s in engine.step().scheduled) == [1, 1, 1, 1, 40]


# --- preemption ------------------------------------------------------------------------


def test_preempts_the_lowest_priority_newest_sequence() -> None:
    sched = make_scheduler(num_blocks=6, block_size=4)
    engine = SimEngine(sched)
    old = make_seq(7, priority=0, arrival=0.0, max_tokens=4)
    new = make_seq([9] * 7, priority=0, arrival=1.0, max_tokens=4)
    urgent = make_seq([5] * 7, priority=-1, arrival=2.0, max_tokens=4)
    for seq in (old, new, urgent):
        sched.add(seq)
    engine.step()  # three 7-token prefills fill all six blocks
    engine.step()  # the 8th token of each still fits in its second block
    assert sched.block_manager.num_free_blocks == 0
    plan = engine.step()  # each needs a third block now
    assert plan.preempted == [new]
    assert [s.seq for s in plan.scheduled] == [urgent, old]
    assert new.status is SequenceStatus.WAITING
    assert new.block_table == [] and new.num_computed_tokens == 0
    assert new.num_preemptions == 1 and sched.stats.num_preemptions == 1
    assert sched.num_waiting == 1 and new not in sched.running

    engine.run()
    assert any(chunks(engine, new)[3:]), "it was resumed"
    assert all(s.is_finished and s.num_output_tokens == 4 for s in (old, new, urgent))
    assert_all_blocks_free(sched.block_manager)


def test_no_admission_in_a_step_that_preempted() -> None:
    """Otherwise the victim (or a newcomer) would grab the blocks just freed for the others."""
    sched = make_scheduler(num_blocks=4, block_size=4)
    engine = SimEngine(sched)
    a = make_seq(7, arrival=0.0, max_tokens=4)
    b = make_seq([9] * 7, arrival=1.0, max_tokens=4)
    sched.add(a)
    sched.add(b)
    engine.step()
    engine.step()
    sched.add(make_seq(1, arrival=2.0))
    plan = engine.step()
    assert plan.preempted == [b]
    assert [s.seq for s in plan.scheduled] == [a]


def step_until_preemption(engine: SimEngine, max_steps: int = 50) -> SchedulerOutput:
    for _ in range(max_steps):
        plan = engine.step()
        if plan.preempted:
            return plan
    raise AssertionError(f"no preemption in {max_steps} steps")


def test_the_lowest_priority_sequence_may_preempt_itself() -> None:
    """A prefill chunk that cannot grow yields to the higher-priority decode scheduled first."""
    sched = make_scheduler(num_blocks=4, block_size=4, max_num_batched_tokens=4)
    engine = SimEngine(sched)
    decode = make_seq([7] * 3, priority=0, arrival=0.0, max_tokens=8)
    prompt = make_seq(12, priority=1, arrival=1.0, max_tokens=2)
    sched.add(decode)
    sched.add(prompt)
    plan = step_until_preemption(engine)
    assert plan.preempted == [prompt]
    assert [s.seq for s in plan.scheduled] == [decode]
    assert prompt.block_table == [] and sched.running == [decode]
    engine.run()
    assert decode.is_finished and prompt.is_finished and prompt.num_preemptions >= 1
    assert_all_blocks_free(sched.block_manager)


def test_preemption_never_spares_a_lower_priority_decode() -> None:
    sched = make_scheduler(num_blocks=4, block_size=4, max_num_batched_tokens=4)
    engine = SimEngine(sched)
    background = make_seq([7] * 3, priority=1, arrival=0.0, max_tokens=8)
    sched.add(background)
    engine.step()  # background prefills and starts decoding
    urgent = make_seq(16, priority=0, arrival=1.0)
    sched.add(urgent)
    plan = step_until_preemption(engine)
    # background (priority 1) holds 2 of the 4 blocks; urgent (priority 0) needs a third.
    assert plan.preempted == [background], f"preempted {plan.preempted} instead"


# --- finish ----------------------------------------------------------------------------


def test_finish_waiting_and_running_frees_everything() -> None:
    sched = make_scheduler(max_num_seqs=1)
    running = make_seq(20)
    waiting = make_seq(20, arrival=1.0)
    sched.add(running)
    sched.add(waiting)
    sched.schedule(0.0)
    assert running.status is SequenceStatus.RUNNING and running.block_table
    assert sched.num_waiting == 1

    sched.finish(waiting, "abort")
    assert waiting.is_finished and waiting.finish_reason == "abort"
    assert sched.num_waiting == 0 and sched.has_unfinished()
    sched.finish(running, "stop", stop_reason=7)
    assert running.is_finished and running.block_table == [] and running.stop_reason == 7
    assert not sched.has_unfinished() and sched.num_running == 0
    sched.finish(running, "abort")  # finishing twice changes nothing
    assert running.finish_reason == "stop"
    assert_all_blocks_free(sched.block_manager)
    # The finished waiting entry is dropped lazily and never scheduled.
    assert sched.schedule(1.0).scheduled == []
    assert sched.waiting == []


def test_finish_a_waiting_fork_frees_its_shared_blocks() -> None:
    sched = make_scheduler(block_size=4, max_num_seqs=1)
    engine = SimEngine(sched)
    parent = make_seq(10, max_tokens=3)
    sched.add(parent)
    engine.step()
    child = make_seq(10)
    child.num_computed_tokens = sched.block_manager.fork(parent, child, 9)
    sched.add(child)
    assert child.block_table == parent.block_table[:2]
    sched.finish(child, "abort")
    assert child.block_table == []
    assert all(sched.block_manager.blocks[b].ref_count == 1 for b in parent.block_table)
    engine.run()
    assert_all_blocks_free(sched.block_manager)


def test_forked_child_resumes_from_its_shared_blocks() -> None:
    """Like LLMEngine._fork: siblings share the prompt's full blocks and compute the rest."""
    sched = make_scheduler(block_size=4)
    engine = SimEngine(sched)
    parent = make_seq(10, max_tokens=3)
    sched.add(parent)
    engine.step()
    child = make_seq(10, max_tokens=3)
    child.num_computed_tokens = sched.block_manager.fork(parent, child, 9)
    sched.add(child)
    plan = engine.step()
    assert (child, 2) in [(s.seq, s.num_tokens) for s in plan.scheduled]
    engine.run()
    assert child.num_output_tokens == 3
    assert_all_blocks_free(sched.block_manager)


def test_finish_of_a_never_added_sequence_keeps_counts() -> None:
    sched = make_scheduler()
    queued = make_seq(4)
    sched.add(queued)
    unforked = make_seq(4)  # a sibling that was never handed to the scheduler
    sched.finish(unforked, "abort")
    assert sched.num_waiting == 1
    assert sched.has_unfinished()


def test_waiting_fork_cannot_deadlock_the_queue() -> None:
    sched = make_scheduler(num_blocks=4, block_size=4)  # 16 tokens: fits any one sequence
    engine = SimEngine(sched)
    parent = make_seq([1] * 8, priority=0, arrival=0.0, max_tokens=4)
    sched.add(parent)
    engine.step()  # parent's prompt is computed; LLMEngine now forks the sibling
    child = make_seq([1] * 8, priority=0, arrival=0.0, max_tokens=4)
    child.num_computed_tokens = sched.block_manager.fork(parent, child, 7)
    sched.add(child)
    urgent = make_seq([2] * 13, priority=-1, arrival=1.0, max_tokens=3)
    sched.add(urgent)
    engine.run(max_steps=100)


def test_waiting_forks_let_go_before_a_running_sequence_preempts_itself() -> None:
    """A running sequence short of blocks while a waiting fork held some preempted itself
    every step, for ever (seen as a worker stuck at 100% KV with one request running)."""
    sched = make_scheduler(
        num_blocks=5,
        block_size=1,
        max_num_seqs=1,
        max_num_batched_tokens=1,
        enable_prefix_caching=False,  # with it, each retry found its own blocks cached
    )
    engine = SimEngine(sched)
    parent = make_seq(3, priority=1, max_tokens=2)
    sched.add(parent)
    engine.step()
    urgent = make_seq(4, priority=0, arrival=1.0, max_tokens=1)
    sched.add(urgent)
    while parent.num_computed_tokens < parent.num_prompt_tokens:
        engine.step()
    child = make_seq(3, priority=1, max_tokens=2)
    child.num_computed_tokens = sched.block_manager.fork(parent, child, 2)
    sched.add(child)
    engine.run(max_steps=100)
    assert urgent.num_output_tokens == 1 and child.num_output_tokens == 2
    assert sched.stats.num_preemptions <= 2
    assert_all_blocks_free(sched.block_manager)


# --- liveness property -----------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    block_size: int
    num_blocks: int
    max_num_seqs: int
    max_num_batched_tokens: int
    enable_prefix_caching: bool
    # Priority 2 is background work with this per-step prefill cap (None: no background).
    background_prefill_tokens: int | None
    # (arrival step, priority, prompt, max output tokens, choices n): the n-1 others fork
    # the first's prompt blocks once it is computed, as LLMEngine._fork does.
    requests: list[tuple[int, int, list[int], int, int]]


@st.composite
def workloads(draw: st.DrawFn) -> Workload:
    block_size = draw(st.sampled_from([1, 2, 4, 8]))
    base = draw(st.lists(st.integers(0, 2), min_size=24, max_size=24))
    requests = []
    for _ in range(draw(st.integers(1, 6))):
        shared = draw(st.integers(0, 24))  # common prefixes make prefix-cache hits likely
        tail = draw(st.lists(st.integers(0, 2), min_size=1, max_size=16))
        requests.append(
            (
                draw(st.integers(0, 6)),
                draw(st.integers(0, 2)),
                base[:shared] + tail,
                draw(st.integers(1, 8)),
                draw(st.sampled_from([1, 1, 2, 3])),
            )
        )
    longest = max(len(prompt) + out for _, _, prompt, out, _ in requests)
    min_blocks = -(-longest // block_size)
    return Workload(
        block_size=block_size,
        num_blocks=min_blocks + draw(st.integers(0, 3)),
        max_num_seqs=draw(st.integers(1, 4)),
        max_num_batched_tokens=draw(st.integers(1, 48)),
        enable_prefix_caching=draw(st.booleans()),
        background_prefill_tokens=draw(st.none() | st.integers(1, 8)),
        requests=requests,
    )


def check_block_accounting(sched: Scheduler, seqs: list[Sequence]) -> None:
    bm = sched.block_manager
    refs = Counter(b for s in seqs if not s.is_finished for b in s.block_table)
    assert all(b.ref_count == refs[b.block_id] for b in bm.blocks)
    assert bm.num_free_blocks + len(refs) == bm.num_blocks


@settings(max_examples=800, deadline=None)
@given(workloads())
def test_every_sequence_finishes_without_leaking_blocks(w: Workload) -> None:
    """With a cache that fits the longest sequence, the scheduler never stalls or leaks,
    forked siblings (n > 1) included."""
    sched = make_scheduler(
        w.num_blocks,
        w.block_size,
        max_num_seqs=w.max_num_seqs,
        max_num_batched_tokens=w.max_num_batched_tokens,
        enable_prefix_caching=w.enable_prefix_caching,
        background_priority=None if w.background_prefill_tokens is None else 2,
        background_prefill_tokens=w.background_prefill_tokens or 1,
    )
    engine = SimEngine(sched)
    pending = sorted(w.requests, key=lambda r: r[0])
    seqs: list[Sequence] = []
    unforked: dict[Sequence, list[Sequence]] = {}
    total = sum((len(p) + out) * n for _, _, p, out, n in w.requests)
    max_steps = 10 + max(r[0] for r in w.requests) + 4 * total * len(w.requests)
    for step in range(max_steps):
        while pending and pending[0][0] <= step:
            _, priority, prompt, out, n = pending.pop(0)
            seq = make_seq(prompt, priority=priority, arrival=float(step), max_tokens=out)
            seqs.append(seq)
            sched.add(seq)
            if n > 1:
                unforked[seq] = [
                    make_seq(prompt, priority=priority, arrival=float(step), max_tokens=out)
                    for _ in range(n - 1)
                ]
        if not pending and not sched.has_unfinished():
            break
        had_work = sched.has_unfinished()
        before = {s: s.num_computed_tokens for s in sched.running}
        decoding = {s for s in sched.running if s.num_uncomputed_tokens == 1}
        plan = engine.step()
        if w.background_prefill_tokens is not None and not plan.preempted:
            prefills = [s for s in plan.scheduled if s.seq not in decoding]
            background_prefill = sum(s.num_tokens for s in prefills if s.seq.priority >= 2)
            assert background_prefill <= w.background_prefill_tokens
            if any(s.seq.priority < 2 for s in prefills):
                assert background_prefill == 0, "a chat's prefill step carried batch prefill"

        assert plan.num_batched_tokens <= w.max_num_batched_tokens
        assert len(plan.scheduled) <= w.max_num_seqs and sched.num_running <= w.max_num_seqs
        assert all(s.num_tokens > 0 for s in plan.scheduled)
        assert len({s.seq for s in plan.scheduled}) == len(plan.scheduled)
        if had_work:
            assert plan.scheduled or plan.preempted, "nothing scheduled: deadlock"
        for victim in plan.preempted:
            assert victim in before and victim not in sched.running
            assert victim.status is SequenceStatus.WAITING
            assert victim.block_table == [] and victim.num_computed_tokens == 0
        waiting = [s for s in seqs if s.status is SequenceStatus.WAITING]
        assert sched.num_waiting == len(waiting)
        check_block_accounting(sched, seqs)
        for parent in [p for p in unforked if p.num_computed_tokens >= p.num_prompt_tokens]:
            for child in unforked.pop(parent):
                child.num_computed_tokens = sched.block_manager.fork(
                    parent, child, child.num_prompt_tokens - 1
                )
                seqs.append(child)
                sched.add(child)
    else:
        raise AssertionError(f"unfinished after {max_steps} steps")

    assert all(s.is_finished and s.finish_reason == "length" for s in seqs)
    assert len(seqs) == sum(n for *_, n in w.requests)
    assert all(s.num_output_tokens == s.params.max_tokens for s in seqs)
    assert sum(s.num_preemptions for s in seqs) == sched.stats.num_preemptions
    assert_all_blocks_free(sched.block_manager)
    assert sched.num_running == 0 and sched.num_waiting == 0
    event(f"preemptions: {min(sched.stats.num_preemptions, 3)}+")
    event(f"prefix hits: {sched.stats.prefix_cache_hits > 0}")
    event(f"steps: {min(step // 20 * 20, 100)}+")


def test_aborted_waiting_entries_do_not_pile_up() -> None:
    """Finishing waiting sequences drops their heap entries lazily, but not unboundedly."""
    sched = make_scheduler()
    seqs = [make_seq(4, arrival=float(i)) for i in range(500)]
    for seq in seqs:
        sched.add(seq)
    for seq in seqs[:490]:
        sched.finish(seq, "abort")
    assert sched.num_waiting == 10
    assert len(sched.waiting) <= 2 * 10 + 64
    assert {s.seq_id for _, s in sched.waiting} >= {s.seq_id for s in seqs[490:]}


def _decoding(sched: Scheduler, prompts: list[int]) -> list[Sequence]:
    """Sequences whose prompts are computed and that have one sampled token to decode."""
    seqs = [make_seq(n, arrival=float(i), max_tokens=100) for i, n in enumerate(prompts)]
    for seq in seqs:
        sched.add(seq)
    plan = sched.schedule(0.0)
    assert {s.seq for s in plan.scheduled} == set(seqs)
    for item in plan.scheduled:
        item.seq.num_computed_tokens += item.num_tokens
        item.seq.token_ids.append(7)
    return seqs


def test_drafts_never_preempt_and_are_cut_to_the_free_blocks() -> None:
    sched = make_scheduler(num_blocks=4, block_size=4)
    first, second = _decoding(sched, [7, 7])  # 2 blocks each: the cache is full
    second.draft_token_ids = [1, 2]  # would need a third block for positions 8 and 9
    first.draft_token_ids = [3]  # position 8 too
    plan = sched.schedule(1.0)
    assert plan.preempted == []
    assert [(s.seq, s.num_tokens, s.draft_token_ids) for s in plan.scheduled] == [
        (first, 1, ()),
        (second, 1, ()),
    ]


def test_drafts_use_only_the_budget_other_decodes_leave() -> None:
    sched = make_scheduler()
    seqs = _decoding(sched, [3, 3, 3])
    for seq in seqs:
        seq.draft_token_ids = [1, 2, 3]
    sched.max_num_batched_tokens = 4  # one token for each decode, one to spare
    plan = sched.schedule(1.0)
    assert [(s.seq, s.num_tokens, s.draft_token_ids) for s in plan.scheduled] == [
        (seqs[0], 2, (1,)),
        (seqs[1], 1, ()),
        (seqs[2], 1, ()),
    ]
    assert all(s.samples for s in plan.scheduled)


def test_an_encoders_prompts_go_whole_or_wait() -> None:
    """whole_prompts (an encoder's): a prompt that does not fit the budget left waits for
    the next step, uncut, and so do those behind it; the long-prefill cap never cuts one."""
    sched = make_scheduler(
        max_num_batched_tokens=100, whole_prompts=True, long_prefill_token_threshold=16
    )
    first, second, third = make_seq(60), make_seq(50, arrival=1.0), make_seq(10, arrival=2.0)
    for seq in (first, second, third):
        sched.add(seq)
    step = sched.schedule(now=0.0).scheduled
    assert [(s.seq, s.num_tokens) for s in step] == [(first, 60)]
    sched.finish(first, "stop")
    step = sched.schedule(now=1.0).scheduled
    assert [(s.seq, s.num_tokens) for s in step] == [(second, 50), (third, 10)]


def test_a_long_background_prompt_of_an_encoder_goes_alone() -> None:
    """Longer than the background prefill cap: it cannot be cut, so it waits for a step
    with nothing else in it rather than forever."""
    sched = make_scheduler(
        max_num_batched_tokens=200,
        whole_prompts=True,
        background_priority=5,
        background_prefill_tokens=32,
    )
    short = make_seq(20, priority=5)
    long = make_seq(100, priority=5, arrival=1.0)
    sched.add(short)
    sched.add(long)
    step = sched.schedule(now=0.0).scheduled
    assert [(s.seq, s.num_tokens) for s in step] == [(short, 20)]
    sched.finish(short, "stop")
    step = sched.schedule(now=1.0).scheduled
    assert [(s.seq, s.num_tokens) for s in step] == [(long, 100)]
