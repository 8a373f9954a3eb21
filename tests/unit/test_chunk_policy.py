"""Prompt chunks beside decoding rows, sized by step cost (engine/chunk_policy.py), on fake cost
curves and a fake clock (nothing here depends on this machine's timings): where a step's cost is
about linear in its rows (the arithmetic bounds it) a prompt goes in small chunks beside decoders,
their stall shrinks and the work per second stays within the margin; where rows are nearly free
(reading the weights bounds it) a prompt is not split, since splitting costs more than it gains;
with no decoders or nothing measured, chunks are greedy, as before the cost model."""

from __future__ import annotations

import pytest

from support.fake_model import CostedModel, FakeClock, FakeTokenizer, expected_tokens
from sysinfer.engine.block_manager import BlockManager
from sysinfer.engine.chunk_policy import MARGIN, candidates, chunk_size
from sysinfer.engine.llm_engine import LLMEngine
from sysinfer.engine.sampling import SamplingParams
from sysinfer.engine.scheduler import Scheduler
from sysinfer.engine.sequence import Sequence
from sysinfer.engine.step_cost import StepCost


def compute_bound(n: int) -> float:
    """A step bound by the arithmetic past a few rows (the 8B shape on Zen 3: r = 8 costs 2.3x r = 1)."""
    return 1.0 + 0.18 * (n - 1)


def weight_bound(n: int) -> float:
    """A step bound by reading the weights up to hundreds of rows (a small model, wide SIMD)."""
    return 1.0 + 0.002 * (n - 1)


def convex(n: int) -> float:
    """Linear up to 64 rows, then dearer per row (activations falling out of cache, say)."""
    return 1.0 + 0.1 * (n - 1) + (0.004 * (n - 64) ** 2 if n > 64 else 0.0)


def _table(curve, rows) -> StepCost:
    cost = StepCost(bucketed=True)
    for _ in range(3):
        for n in rows:
            cost.observe(n, curve(n))
    return cost


ALL = list(range(1, 17)) + [24, 32, 48, 64, 96, 128, 192, 256]


def _rate(curve, d, p):
    return (d + p) / curve(d + p)


def test_candidates():
    assert candidates(1) == [1]
    assert candidates(20) == [1, 2, 3, 4, 6, 8, 12, 16, 20]
    assert candidates(64) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]


def test_compute_bound_steps_take_small_chunks_within_the_margin():
    cost = _table(compute_bound, ALL)
    p = chunk_size(cost, 4, 252)
    assert 8 <= p <= 126  # well below the 252 the budget allows
    best = max(_rate(compute_bound, 4, q) for q in range(1, 253))
    assert _rate(compute_bound, 4, p) >= best / (1 + MARGIN) * 0.999
    # the next smaller candidate would have given up more than the margin
    smaller = candidates(252)[candidates(252).index(p) - 1]
    assert _rate(compute_bound, 4, smaller) < best / (1 + MARGIN) * 1.01  # (estimates: 1 % of slack)


def test_weight_bound_steps_keep_the_prompt_whole():
    cost = _table(weight_bound, ALL)
    assert chunk_size(cost, 4, 200) == 200


def test_where_big_chunks_are_dear_per_row_the_chunk_stays_below_them():
    cost = _table(convex, ALL)
    p = chunk_size(cost, 2, 250)
    assert p < 64
    best = max(_rate(convex, 2, q) for q in candidates(250))
    assert _rate(convex, 2, p) >= best / (1 + MARGIN) * 0.999


def test_greedy_without_decoders_or_without_measurements():
    assert chunk_size(_table(compute_bound, ALL), 0, 200) == 200  # nobody waits
    assert chunk_size(StepCost(bucketed=True), 4, 200) == 200     # nothing measured
    assert chunk_size(_table(compute_bound, [8]), 4, 200) == 200  # nothing at or below 4 + 1 rows


def test_a_slowed_small_step_does_not_make_big_steps_look_cheap():
    cost = StepCost(bucketed=True)
    for rows, seconds in ((4, 1.0), (64, 8.0), (99, 20.0), (131, 12.0), (131, 12.5), (256, 24.0)):
        cost.observe(rows, seconds)  # the 99-row step ran while another process had the cores
    levels = [c for _, c in cost.points()]
    assert levels == sorted(levels) and levels[2] == levels[3] == pytest.approx((20.0 + 12.0 + 12.5) / 3)


def test_bucketed_table_keeps_each_bucket_at_its_own_rows():
    cost = StepCost(bucketed=True)
    assert [cost.key(n) for n in (16, 17, 100, 128, 140, 512)] == [16, 16, 108, 128, 152, 512]
    cost.observe(140, 14.0)  # 0.1 s per row, in the 152 bucket, as a point at 140 rows
    assert cost.measured(152) == 14.0 and cost.estimate(140) == 14.0
    cost.observe(108, 10.8)
    assert cost.estimate(150) == pytest.approx(15.0) and cost.estimate(120) == pytest.approx(12.0)


def test_the_policy_is_a_setting():
    from sysinfer.config import ServerConfig

    assert ServerConfig().validate().engine_config().chunk_policy == "greedy"
    assert ServerConfig.from_env({"SYSINFER_CHUNK_POLICY": "cost"}).engine_config().chunk_policy == "cost"
    with pytest.raises(ValueError, match="chunk_policy"):
        ServerConfig(chunk_policy="eager").validate()
    engine = LLMEngine(CostedModel(FakeClock(), compute_bound), FakeTokenizer(), chunk_policy="cost")
    assert engine.scheduler.cost is engine.step_cost is not None
    assert LLMEngine(CostedModel(FakeClock(), compute_bound), FakeTokenizer()).scheduler.cost is None


def _seq(i, n_prompt):
    return Sequence(f"r{i}", list(range(1, n_prompt + 1)), SamplingParams(max_tokens=50))


def test_scheduler_sizes_only_the_chunk_beside_decoders():
    blocks = BlockManager(512, 16, False, 0.0)
    cost = _table(compute_bound, ALL)
    sched = Scheduler(blocks, max_batch=8, max_step_tokens=256, cost=cost)
    decoders = [_seq(i, 4) for i in range(3)]
    for seq in decoders:
        sched.add(seq)
    plan = sched.schedule()
    assert [c.count for c in plan] == [4, 4, 4]  # no decoders yet: whole prompts
    sched.after_step(plan)
    for seq in decoders:
        seq.output_ids.append(7)
    sched.add(_seq(9, 240))
    plan = sched.schedule()
    counts = [c.count for c in plan]
    assert counts[:3] == [1, 1, 1] and 8 <= counts[3] < 240
    assert counts[3] == chunk_size(cost, 3, 256 - 3)
    sched.after_step(plan)
    for seq in decoders:
        seq.output_ids.append(7)
    # Prompts pending: they share one chunk's worth of prompt tokens; the rest wait their turn.
    room = chunk_size(cost, 3, 256 - 3)
    sched.add(_seq(10, room // 2))
    sched.add(_seq(11, 240))
    sched.add(_seq(12, 240))
    plan = sched.schedule()
    chunks = [(c.seq.request_id, c.count) for c in plan[3:]]
    assert [c.count for c in plan[:3]] == [1, 1, 1] and chunks[0] == ("r9", min(room, 240 - counts[3]))
    assert sum(n for _, n in chunks) == room and all(n > 0 for _, n in chunks)
    assert len(sched.waiting) == 3 - (len(chunks) - 1)  # not admitted: no prompt room left this step
    greedy = Scheduler(BlockManager(512, 16, False, 0.0), max_batch=8, max_step_tokens=256)
    for seq in [_seq(i, 4) for i in range(3)] + [_seq(9, 240)]:
        greedy.add(seq)
    assert [c.count for c in greedy.schedule()] == [4, 4, 4, 240]


def _serve(curve, policy):
    """Three streams decoding when a 200-token prompt arrives: (replies, the longest gap between a
    decoder's tokens, total fake seconds)."""
    clock = FakeClock()
    model = CostedModel(clock, curve, n_vocab=50, max_step_tokens=256, max_out_rows=16, n_kv_blocks=256)
    engine = LLMEngine(model, FakeTokenizer(), max_batch=4, chunk_policy=policy, clock=clock,
                       enable_prefix_cache=False)
    prompts = [[3, 1, 4, 1, 5, i] for i in range(3)] + [[(7 * i) % 49 + 1 for i in range(200)]]
    seqs = [engine.add_request(p, SamplingParams(max_tokens=60)) for p in prompts[:3]]
    last, gaps = {}, []
    for n_step in range(400):
        if n_step == 10:
            seqs.append(engine.add_request(prompts[3], SamplingParams(max_tokens=60)))
        for seq, delta in engine.step():
            if seq in seqs[:3] and delta.token_ids:
                if seq in last:
                    gaps.append(clock.now - last[seq])
                last[seq] = clock.now
        if not engine.has_work():
            break
    replies = [s.output_ids for s in seqs]
    assert replies == [expected_tokens(p, 60) for p in prompts]
    return max(gaps), clock.now


@pytest.mark.parametrize("curve", [compute_bound, convex])
def test_decoders_wait_less_and_the_work_takes_no_longer(curve):
    stall_greedy, t_greedy = _serve(curve, "greedy")
    stall_cost, t_cost = _serve(curve, "cost")
    assert stall_cost < 0.5 * stall_greedy
    assert t_cost <= t_greedy * (1 + MARGIN)


def test_weight_bound_model_schedules_as_before():
    assert _serve(weight_bound, "cost") == pytest.approx(_serve(weight_bound, "greedy"))
