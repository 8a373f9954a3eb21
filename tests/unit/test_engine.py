"""Block manager, scheduler and async engine on a fake model (no native core)."""

from __future__ import annotations

import random

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.fake_model import FakeModel, FakeReplicas, FakeTokenizer, expected_tokens
from sysinfer.engine.async_engine import AsyncEngine
from sysinfer.engine.block_manager import BlockManager
from sysinfer.engine.errors import ContextLengthError, EngineClosedError, QueueFullError
from sysinfer.engine.llm_engine import LLMEngine
from sysinfer.engine.sampling import SamplingParams
from sysinfer.engine.sequence import Sequence


def cores(engine: AsyncEngine) -> list[LLMEngine]:
    """The engine's LLMEngines: one, or one per lane (--numa replicate)."""
    return getattr(engine.core, "lanes", [engine.core])


def fake_model(lanes: bool, **kwargs):
    """A FakeModel, or (lanes) two replicas of it: the engine core is then Lanes."""
    return FakeReplicas(2, **kwargs) if lanes else FakeModel(**kwargs)


def check_block_invariants(engine: AsyncEngine) -> None:
    for core in cores(engine):
        _check_core_blocks(core)


def _check_core_blocks(engine: LLMEngine) -> None:
    bm = engine.blocks
    owners: dict[int, int] = {}
    for seq in engine.scheduler.running:
        for b in seq.block_table:
            owners[b] = owners.get(b, 0) + 1
    for b in range(bm.num_blocks):
        assert bm.ref_count[b] == owners.get(b, 0), f"block {b}: ref {bm.ref_count[b]} but {owners.get(b, 0)} owners"
    free = set(bm.free_blocks) | set(bm.cached_free)
    assert len(free) == bm.num_free and not (free & set(owners))
    assert len(free) + len(owners) == bm.num_blocks
    for h, b in bm.hash_to_block.items():
        assert bm.block_hash[b] == h


async def run_requests(engine: AsyncEngine, requests: list[tuple[list[int], int]], abort_after: dict[int, int] | None = None,
                       delays: list[float] | None = None) -> dict[int, tuple[list[int], str]]:
    results: dict[int, tuple[list[int], str]] = {}
    abort_after = abort_after or {}

    async def one(i: int, prompt: list[int], n: int) -> None:
        if delays:
            await anyio.sleep(delays[i])
        tokens, reason = [], None
        async for delta in engine.generate(prompt, SamplingParams(max_tokens=n)):
            tokens += [t for t in delta.token_ids if t != 0]
            reason = delta.finish_reason
            check_block_invariants(engine)
            if i in abort_after and len(tokens) >= abort_after[i]:
                break  # the client goes away
        results[i] = (tokens, reason or "abort")

    async with anyio.create_task_group() as tg:
        tg.start_soon(engine.run)
        async with anyio.create_task_group() as clients:
            for i, (prompt, n) in enumerate(requests):
                clients.start_soon(one, i, prompt, n)
        await engine.shutdown()
    return results


def assert_idle(engine: AsyncEngine) -> None:
    check_block_invariants(engine)
    assert all(core.blocks.num_free == core.blocks.num_blocks for core in cores(engine))
    assert not engine.scheduler.running and not engine.scheduler.waiting and not engine.by_id


prompts = st.lists(st.integers(1, 49), min_size=1, max_size=30)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reqs=st.lists(st.tuples(prompts, st.integers(1, 12)), min_size=1, max_size=8),
       n_blocks=st.integers(12, 40), max_batch=st.integers(1, 6), step_tokens=st.integers(4, 40),
       aborts=st.dictionaries(st.integers(0, 7), st.integers(1, 5), max_size=3), prefix=st.booleans(),
       seed=st.integers(0, 1000), lanes=st.booleans())
def test_every_request_finishes_correctly_and_blocks_return(reqs, n_blocks, max_batch, step_tokens, aborts, prefix, seed,
                                                            lanes):
    rng = random.Random(seed)
    if prefix:  # a shared system prompt exercises the prefix cache
        shared = [rng.randint(1, 49) for _ in range(9)]
        reqs = [(shared + p, n) for p, n in reqs]
    model = fake_model(lanes, n_kv_blocks=n_blocks, block_size=4, max_step_tokens=64)
    engine = AsyncEngine(model, FakeTokenizer(), max_batch=max_batch, max_step_tokens=step_tokens)
    requests = [(p, n) for p, n in reqs if len(p) + n <= (n_blocks - engine.blocks.watermark_blocks) * 4]
    delays = [rng.random() * 0.002 for _ in requests]
    results = anyio.run(run_requests, engine, requests, aborts, delays)
    assert len(results) == len(requests)
    for i, (prompt, n) in enumerate(requests):
        tokens, reason = results[i]
        want = expected_tokens(prompt, n)
        if i in aborts and aborts[i] < n:
            assert tokens == want[: len(tokens)]
        else:
            assert (tokens, reason) == (want, "length"), (i, engine.scheduler.preemptions)
    assert_idle(engine)


@pytest.mark.parametrize("lanes", [False, True])
def test_preemption_keeps_outputs_correct(lanes):
    model = fake_model(lanes, n_kv_blocks=10, block_size=4)
    engine = AsyncEngine(model, FakeTokenizer(), max_batch=4, max_step_tokens=32)
    requests = [([i + 1] * 5, 14) for i in range(4 * (1 + lanes))]  # with lanes: 4 per lane
    results = anyio.run(run_requests, engine, requests)
    assert all(core.scheduler.preemptions > 0 for core in cores(engine))
    for i, (prompt, n) in enumerate(requests):
        assert results[i] == (expected_tokens(prompt, n), "length")
    assert_idle(engine)


def test_prefix_cache_reuses_blocks_and_prefills_only_the_suffix():
    model = FakeModel(n_kv_blocks=64, block_size=4)
    engine = AsyncEngine(model, FakeTokenizer(), max_batch=1)
    system = list(range(1, 41))  # 10 full blocks
    first = anyio.run(run_requests, engine, [(system + [7, 8], 3)])
    model.steps.clear()
    engine2 = engine  # same cache, new loop run
    engine2._closed = False
    second = anyio.run(run_requests, engine2, [(system + [9], 3)])
    assert engine.blocks.prefix_hit_tokens == 40
    assert model.steps[0][0] == 1  # prefill ran only the one new prompt token
    assert second[0] == (expected_tokens(system + [9], 3), "length")
    assert first[0] == (expected_tokens(system + [7, 8], 3), "length")


def test_max_batch_one_runs_requests_in_arrival_order():
    model = FakeModel()
    engine = AsyncEngine(model, FakeTokenizer(), max_batch=1)
    order: list[int] = []

    async def main():
        async def one(i):
            async for delta in engine.generate([i + 1, i + 2], SamplingParams(max_tokens=4)):
                order.append(i)

        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.run)
            async with anyio.create_task_group() as clients:
                for i in range(3):
                    clients.start_soon(one, i)
                    await anyio.sleep(0.001)
            await engine.shutdown()

    anyio.run(main)
    assert order == sorted(order)  # each finishes before the next starts
    assert all(n == 1 for n_tok, n in model.steps)  # never two sequences in one step


@pytest.mark.parametrize("lanes", [False, True])
def test_queue_limit_and_context_errors(lanes):
    engine = AsyncEngine(fake_model(lanes, n_ctx=64), FakeTokenizer(), max_batch=1, max_queue=2)
    engine.submit([1, 2], SamplingParams(max_tokens=2))
    engine.submit([1, 2], SamplingParams(max_tokens=2))
    with pytest.raises(QueueFullError):
        engine.submit([1, 2], SamplingParams(max_tokens=2))
    with pytest.raises(ContextLengthError, match="context"):
        AsyncEngine(fake_model(lanes, n_ctx=64), FakeTokenizer()).submit([1] * 60, SamplingParams(max_tokens=10))
    with pytest.raises(ContextLengthError, match="KV cache"):
        AsyncEngine(fake_model(lanes, n_kv_blocks=4, block_size=4), FakeTokenizer()).submit(
            [1] * 20, SamplingParams(max_tokens=4))


def test_one_sequence_at_a_time_can_use_the_whole_kv_cache():
    """max_batch 1 asks for no watermark: a cache sized for n_ctx holds an n_ctx-token request (with
    one block held back, `benchmarks/decode_speed.py` failed: "193 tokens exceed the KV cache (192)")."""
    assert BlockManager(num_blocks=13, block_size=16, watermark=0).watermark_blocks == 0
    assert BlockManager(num_blocks=13, block_size=16, watermark=0.01).watermark_blocks == 1
    engine = LLMEngine(FakeModel(n_ctx=208, n_kv_blocks=13, block_size=16), FakeTokenizer(), max_batch=1)
    assert engine.max_total_tokens == 208
    engine.check_prompt(128, 80)  # fills the cache to the last slot
    with pytest.raises(ContextLengthError):
        engine.check_prompt(128, 81)
    assert LLMEngine(FakeModel(n_ctx=208, n_kv_blocks=13, block_size=16), FakeTokenizer(), max_batch=2).max_total_tokens == 192


def test_a_prompt_of_several_chunks_fills_a_cache_sized_for_it():
    """A prompt longer than max_step_tokens in a cache with room for it and its output only: each
    chunk after the first uses the blocks the prompt already has (asking for blocks past the prompt
    made it preempt itself after every first chunk, for ever)."""
    model = FakeModel(n_ctx=64, n_kv_blocks=16, block_size=4, max_step_tokens=16)
    engine = LLMEngine(model, FakeTokenizer(), max_batch=1, max_step_tokens=16)
    prompt = [(7 * i) % 40 + 1 for i in range(60)]  # 4 chunks: 16, 16, 16, 12
    out = [d for d in engine.generate(prompt, SamplingParams(max_tokens=4, ignore_eos=True))]
    assert engine.scheduler.preemptions == 0
    assert [n_tok for n_tok, _ in model.steps[:4]] == [16, 16, 16, 12]
    assert len(model.steps) == 4 + 3  # then one decode step per further token
    assert sum(len(d.token_ids) for d in out) == 4


def test_block_manager_check_act_pairs():
    bm = BlockManager(num_blocks=4, block_size=4, watermark=0)
    a = Sequence("a", list(range(1, 10)), SamplingParams())
    assert bm.can_allocate(a)
    bm.allocate(a)
    assert len(a.block_table) == 3 and bm.num_free == 1
    a.num_computed = 9
    bm.register_computed(a)
    a.output_ids = [5, 6, 7, 8]
    assert bm.can_append(a, 1) and not bm.can_append(a, 5)
    bm.free(a)
    assert bm.num_free == 4 and bm.num_cached == 2  # two full blocks keep their hashes
    b = Sequence("b", list(range(1, 10)), SamplingParams())
    bm.allocate(b)
    assert b.num_computed == 8 and b.cached_prompt_tokens == 8


async def _collect(engine: AsyncEngine, prompt: list[int], params: SamplingParams):
    tokens, last = [], None
    async for delta in engine.generate(prompt, params):
        tokens += delta.token_ids
        last = delta
    return tokens, last


def _run_with_loop(engine: AsyncEngine, *jobs):
    """Runs the engine loop and the given (prompt, params) requests concurrently; returns their results."""
    results = {}

    async def main():
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.run)
            async with anyio.create_task_group() as clients:
                for i, (prompt, params) in enumerate(jobs):
                    async def one(i=i, prompt=prompt, params=params):
                        results[i] = await _collect(engine, prompt, params)
                    clients.start_soon(one)
            await engine.shutdown()

    anyio.run(main)
    return results


@pytest.mark.parametrize("bad", [dict(temperature=1e-308), dict(temperature=1.0, repetition_penalty=5e-324),
                                 dict(temperature=1e-300, top_p=0.5, min_p=0.9)])
@pytest.mark.parametrize("lanes", [False, True])
def test_extreme_sampling_values_neither_fail_nor_stop_the_engine(bad, lanes):
    """Issue 15, first defect: NaN probabilities ended the engine loop for every request."""
    engine = AsyncEngine(fake_model(lanes), FakeTokenizer(), max_batch=2)
    results = _run_with_loop(engine, ([1, 2, 3], SamplingParams(max_tokens=4, **bad)),
                             ([4, 5], SamplingParams(max_tokens=5)))
    assert results[0][1].finish_reason == "length" and len(results[0][0]) == 4
    assert results[1] == (expected_tokens([4, 5], 5), results[1][1]) and results[1][1].finish_reason == "length"
    assert engine.failure is None
    assert_idle(engine)


@pytest.mark.parametrize("lanes", [False, True])
def test_one_requests_failure_is_its_own(monkeypatch, lanes):
    """A request whose sampling raises ends with an error; the others finish; the engine goes on."""
    engine = AsyncEngine(fake_model(lanes), FakeTokenizer(), max_batch=3)
    original = engine.submit

    def submit(prompt, params, request_id=None):
        seq = original(prompt, params, request_id)
        if prompt == [9, 9]:
            seq.state.sampler.sample = lambda *a: (_ for _ in ()).throw(RuntimeError("boom"))
        return seq

    monkeypatch.setattr(engine, "submit", submit)
    results = _run_with_loop(engine, ([1, 2], SamplingParams(max_tokens=6)), ([9, 9], SamplingParams(max_tokens=6)),
                             ([3, 4], SamplingParams(max_tokens=6)))
    assert results[1][1].finish_reason == "error" and "RuntimeError" in results[1][1].error
    assert results[0][0] == expected_tokens([1, 2], 6) and results[2][0] == expected_tokens([3, 4], 6)
    assert engine.failure is None
    assert_idle(engine)


def test_a_failed_native_step_fails_its_requests_only():
    model = FakeModel()
    engine = AsyncEngine(model, FakeTokenizer(), max_batch=1)
    real_step, calls = model.step, []

    def step(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("native failure")
        return real_step(*args)

    model.step = step
    results = _run_with_loop(engine, ([1, 2], SamplingParams(max_tokens=5)), ([3, 4], SamplingParams(max_tokens=3)))
    assert results[0][1].finish_reason == "error" and "step failed" in results[0][1].error
    assert results[1][0] == expected_tokens([3, 4], 3) and results[1][1].finish_reason == "length"
    assert engine.failure is None
    assert_idle(engine)


def test_a_broken_loop_says_so_and_refuses_new_requests(monkeypatch):
    """A failure outside any request stops the loop: every request ends with an error, `failure`
    (what /health reports) says why, and new requests are refused instead of hanging."""
    engine = AsyncEngine(FakeModel(), FakeTokenizer(), max_batch=1)
    monkeypatch.setattr(engine.scheduler, "schedule", lambda: 1 / 0)
    results = _run_with_loop(engine, ([1, 2], SamplingParams(max_tokens=5)))
    assert results[0][1].finish_reason == "error"
    assert engine.failure and "ZeroDivisionError" in engine.failure
    with pytest.raises(EngineClosedError, match="stopped"):
        engine.submit([1], SamplingParams(max_tokens=1))


@pytest.mark.parametrize("lanes", [False, True])
def test_drain_lets_running_requests_finish_then_ends_the_rest(lanes):
    """SIGTERM's path: new requests are refused at once, short ones finish, the rest end with "abort"
    and a last delta (so their streams close properly)."""
    engine = AsyncEngine(fake_model(lanes, n_ctx=4096, n_kv_blocks=1100), FakeTokenizer(), max_batch=2)
    results = {}

    async def main():
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.run)

            async def one(i, n):
                results[i] = await _collect(engine, [i + 1, 7], SamplingParams(max_tokens=n))
            tg.start_soon(one, 0, 3)
            tg.start_soon(one, 1, 4000)  # far too long to finish within the grace period
            await anyio.sleep(0.01)
            tg.start_soon(engine.drain, 0.3)
            await anyio.sleep(0.01)
            with pytest.raises(EngineClosedError, match="shutting down"):
                engine.submit([5], SamplingParams(max_tokens=1))

    anyio.run(main)
    assert results[0][1].finish_reason == "length"
    assert results[1][1].finish_reason == "abort" and 0 < len(results[1][0]) < 4000
    assert_idle(engine)


def test_requests_past_the_time_limit_end_and_nonreading_clients_are_dropped():
    """A request can't hold a slot forever (request_timeout), and a streaming client that stops
    reading can't make the engine buffer tokens for it without bound (stall_timeout). Each limit on
    its own engine: with both on one, a loaded machine reached the 0.3 s time limit before the
    silent client had left 32 deltas unread for 0.2 s, and the test failed for no fault."""
    timed = AsyncEngine(FakeModel(n_ctx=4096, n_kv_blocks=1100), FakeTokenizer(), max_batch=2, request_timeout=0.3)
    stalled = AsyncEngine(FakeModel(n_ctx=4096, n_kv_blocks=1100), FakeTokenizer(), max_batch=2, stall_timeout=0.2)
    results = {}

    async def main():
        async with anyio.create_task_group() as tg:
            tg.start_soon(timed.run)
            tg.start_soon(stalled.run)
            # reads everything, but the request is too long for the time limit
            results["long"] = await _collect(timed, [1, 2], SamplingParams(max_tokens=4000))
            silent = stalled.submit([3, 4], SamplingParams(max_tokens=4000))  # never read
            with anyio.move_on_after(30):
                while not silent.finished:
                    await anyio.sleep(0.05)
            results["silent"] = (silent.finished, silent.finish_reason, len(silent.output_ids))
            await timed.shutdown()
            await stalled.shutdown()

    anyio.run(main)
    tokens, last = results["long"]
    assert last.finish_reason == "length" and 0 < len(tokens) < 4000
    finished, reason, n_out = results["silent"]
    assert finished and reason == "abort" and n_out < 4000
    assert_idle(timed)
    assert_idle(stalled)


def _repetitive_prompt(rng: random.Random) -> list[int]:
    """Prompts that repeat phrases, so prompt lookup drafts often, right and wrong."""
    phrase = [rng.randint(1, 49) for _ in range(rng.randint(2, 6))]
    return (phrase * rng.randint(2, 5) + [rng.randint(1, 49) for _ in range(rng.randint(0, 4))])[:30]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_reqs=st.integers(1, 6), max_batch=st.integers(1, 4), n_blocks=st.integers(20, 60),
       step_tokens=st.integers(8, 40), seed=st.integers(0, 10_000), lanes=st.booleans())
def test_speculation_changes_nothing_but_speed(n_reqs, max_batch, n_blocks, step_tokens, seed, lanes):
    """With prompt-lookup drafts verified in the step, every output equals the model's own greedy
    continuation (the fake model reads each drafted position back through the block table, so a
    wrong rollback changes the output), the block invariants hold after every delta, and at idle
    every block is free, exactly as without speculation."""
    rng = random.Random(seed)
    requests = [(_repetitive_prompt(rng), rng.randint(1, 24)) for _ in range(n_reqs)]
    model = fake_model(lanes, n_kv_blocks=n_blocks, block_size=4, max_step_tokens=64, max_out_rows=64)
    engine = AsyncEngine(model, FakeTokenizer(), max_batch=max_batch, max_step_tokens=step_tokens, speculative=True)
    requests = [(p, n) for p, n in requests if len(p) + n <= (n_blocks - engine.blocks.watermark_blocks) * 4]
    results = anyio.run(run_requests, engine, requests)
    for i, (prompt, n) in enumerate(requests):
        assert results[i] == (expected_tokens(prompt, n), "length"), i
    assert_idle(engine)


class _PeriodicModel(FakeModel):
    """Continues any context with period 3 (reading it back through the block tables): prompt
    lookup predicts it perfectly, so whole drafts are accepted."""

    @staticmethod
    def next_token(context: list[int], n_vocab: int) -> int:
        return context[-3]


def test_accepted_drafts_give_the_same_tokens_in_fewer_steps():
    prompt, n = [5, 6, 7, 5, 6, 7, 5], 40
    tokens = list(prompt)
    while len(tokens) < len(prompt) + n:
        tokens.append(tokens[-3])
    want = tokens[len(prompt):]  # the period-3 continuation
    outputs = {}
    for speculative in (False, True):
        model = _PeriodicModel(n_kv_blocks=64, block_size=4, max_out_rows=16)
        # always: this checks what accepted drafts do; whether drafting pays is spec_policy's, timed there on a
        # fake clock (under the cost policy this test read the wall clock and drafted only 8 tokens once)
        engine = AsyncEngine(model, FakeTokenizer(), max_batch=1, speculative=speculative, draft_policy="always")
        results = anyio.run(run_requests, engine, [(prompt, n)])
        outputs[speculative] = (results[0], engine.stats.steps, engine.stats.accepted_draft_tokens)
        assert_idle(engine)
    assert outputs[False][0] == outputs[True][0] == (want, "length")
    assert outputs[True][2] > 20 and outputs[True][1] < outputs[False][1] / 3, outputs


def test_admission_hashes_each_prompt_block_once(monkeypatch):
    """can_allocate and allocate both walked the prompt's hash chain, and a waiting sequence walked it
    again at every step: the chain is now kept on the sequence and extended as it grows."""
    calls = []
    real = BlockManager.chain_hash
    monkeypatch.setattr(BlockManager, "chain_hash", staticmethod(lambda h, chunk: calls.append(chunk) or real(h, chunk)))
    bm = BlockManager(16, 4)
    seq = Sequence("a", list(range(1, 22)), SamplingParams())  # 21 tokens: 5 full blocks before the last token
    for _ in range(3):  # e.g. checked at three steps while it waited
        assert bm.can_allocate(seq)
    bm.allocate(seq)
    assert len(calls) == 5 and seq.block_hashes == seq.block_hashes[:5]
    seq.output_ids += [7, 8, 9, 10]  # grows: only the new full block is hashed
    assert bm._cached_prefix(seq) == [] and len(calls) == 6


def test_sequence_tokens_are_appended_not_rebuilt():
    seq = Sequence("a", [1, 2, 3], SamplingParams())
    first = seq.tokens
    seq.output_ids.append(4)
    assert seq.tokens is first and first == [1, 2, 3, 4] and len(seq) == 4
    seq.output_ids += [5, 6]
    assert seq.tokens == [1, 2, 3, 4, 5, 6]
