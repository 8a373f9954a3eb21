"""`n` choices of one request on the fake model: one stream, each delta naming its choice, the
prompt computed once (choices 1..n-1 take it from the prefix cache), seeds per choice."""

from __future__ import annotations

import anyio
import pytest

from support.fake_model import FakeModel, FakeTokenizer, expected_tokens
from sysinfer.server.choices import ChoiceCollector, choice_params
from sysinfer.engine.async_engine import AsyncEngine
from sysinfer.engine.errors import QueueFullError, TooManyChoicesError
from sysinfer.engine.sampling import Sampler, SamplingParams
from test_engine import assert_idle, fake_model

PROMPT = list(range(1, 23))  # 22 tokens: five full blocks of 4, and 2 tokens in a sixth


def run_n(engine: AsyncEngine, params: SamplingParams, n: int, prompt=PROMPT, leave_after: int | None = None):
    """Deltas of one request with n choices, in the order they came."""
    got = []

    async def main():
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.run)
            choices = choice_params(params, n)
            seq = engine.submit(prompt, choices[0], more_choices=choices[1:])
            async for d in engine.stream(seq):
                got.append(d)
                if leave_after is not None and len(got) >= leave_after:
                    break
            await engine.shutdown()

    anyio.run(main)
    return got


def tokens_by_choice(deltas, n):
    out = [[] for _ in range(n)]
    for d in deltas:
        out[d.choice] += d.token_ids
    return out


@pytest.mark.parametrize("max_batch", [1, 4])
def test_greedy_choices_are_identical_and_the_prompt_is_computed_once(max_batch):
    engine = AsyncEngine(FakeModel(), FakeTokenizer(), max_batch=max_batch)
    deltas = run_n(engine, SamplingParams(max_tokens=6), 3)
    assert tokens_by_choice(deltas, 3) == [expected_tokens(PROMPT, 6)] * 3
    finals = [d for d in deltas if d.finish_reason]
    assert sorted(d.choice for d in finals) == [0, 1, 2] and all(d.finish_reason == "length" for d in finals)
    # choice 0 computes all 22 prompt tokens; the others find the 5 full blocks (20 tokens) cached
    assert engine.stats.prompt_tokens_computed == 22 + 2 * 2
    assert engine.blocks.prefix_hit_tokens == 2 * 20
    assert_idle(engine)


def test_seeded_choices_are_reproducible_and_distinct():
    params = SamplingParams(max_tokens=24, temperature=2.0, seed=42)
    first = tokens_by_choice(run_n(AsyncEngine(FakeModel(), FakeTokenizer(), max_batch=2), params, 3), 3)
    again = tokens_by_choice(run_n(AsyncEngine(FakeModel(), FakeTokenizer(), max_batch=1), params, 3), 3)
    assert first == again
    assert len({tuple(t) for t in first}) == 3
    # choice i samples as a single request seeded seed + i would
    alone = tokens_by_choice(run_n(AsyncEngine(FakeModel(), FakeTokenizer()), SamplingParams(
        max_tokens=24, temperature=2.0, seed=43), 1), 1)
    assert alone[0] == first[1]


def test_seeds_wrap_around_and_parameters_are_not_shared():
    params = choice_params(SamplingParams(seed=2**64 - 1, stop=["x"], logit_bias={1: 2.0}), 3)
    assert [p.seed for p in params] == [2**64 - 1, 0, 1]
    params[1].stop.append("y")
    assert params[0].stop == ["x"] and params[2].stop == ["x"]


@pytest.mark.parametrize("lanes", [False, True])
def test_leaving_early_aborts_every_choice_and_frees_the_blocks(lanes):
    engine = AsyncEngine(fake_model(lanes), FakeTokenizer(), max_batch=2)
    run_n(engine, SamplingParams(max_tokens=40), 4, leave_after=3)
    assert_idle(engine)
    assert not engine.requests and not engine.streams


@pytest.mark.parametrize("lanes", [False, True])
def test_choices_queued_after_a_drain_began_end_with_abort(lanes):
    engine = AsyncEngine(fake_model(lanes), FakeTokenizer(), max_batch=1)
    got = []

    async def main():
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.run)
            seq = engine.submit(PROMPT, SamplingParams(max_tokens=3), more_choices=[SamplingParams(max_tokens=3)] * 2)
            engine._closed_for_new = True  # a drain began before choice 0's first token
            async for d in engine.stream(seq):
                got.append(d)
            await engine.shutdown()

    anyio.run(main)
    finals = {d.choice: d.finish_reason for d in got if d.finish_reason}
    assert finals == {0: "length", 1: "abort", 2: "abort"}
    assert_idle(engine)


@pytest.mark.parametrize("lanes", [False, True])
def test_the_queue_must_hold_every_choice(lanes):
    engine = AsyncEngine(fake_model(lanes), FakeTokenizer(), max_queue=3)
    params = SamplingParams(max_tokens=8)
    with pytest.raises(TooManyChoicesError):  # n = 4 never fits a queue of 3 (400, not 429)
        engine.submit(PROMPT, params, more_choices=[params] * 3)
    assert not engine.by_id and not engine.scheduler.waiting
    engine.submit(PROMPT, params)
    with pytest.raises(QueueFullError):  # n = 3 fits an empty queue, not one with a request waiting
        engine.submit(PROMPT, params, more_choices=[params] * 2)
    assert len(engine.scheduler.waiting) == 1


def test_collector_sums_usage_and_keeps_choices_apart():
    engine = AsyncEngine(FakeModel(), FakeTokenizer(), max_batch=2)
    deltas = run_n(engine, SamplingParams(max_tokens=5), 2)
    collected = ChoiceCollector(2, FakeTokenizer(), chat=True, logprobs=False)
    for d in deltas:
        collected.add(d)
    choices, usage = collected.choices(), collected.total.usage()
    assert [c.index for c in choices] == [0, 1] and choices[0].text == choices[1].text != ""
    assert usage.prompt_tokens == 22 and usage.completion_tokens == 10 and usage.cached_tokens == 0


def test_one_failed_choice_and_abort_request_end_them_all(monkeypatch):
    """What the server does when a choice fails: abort_request ends the others (queued or running)."""
    original = Sampler.sample

    def sample(self, logits, generated, allowed=None):
        if self.params.seed == 11:  # choice 1 of a request seeded 10
            raise RuntimeError("boom")
        return original(self, logits, generated, allowed)

    monkeypatch.setattr(Sampler, "sample", sample)
    engine = AsyncEngine(FakeModel(), FakeTokenizer(), max_batch=2)
    got = []

    async def main():
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.run)
            choices = choice_params(SamplingParams(max_tokens=30, temperature=1.0, seed=10), 4)
            seq = engine.submit(PROMPT, choices[0], more_choices=choices[1:])
            async for d in engine.stream(seq):
                got.append(d)
                if d.error:
                    engine.abort_request(seq.request_id)
            await engine.shutdown()

    anyio.run(main)
    finals = {d.choice: d.finish_reason for d in got if d.finish_reason}
    assert finals[1] == "error" and set(finals) == {0, 1, 2, 3}
    assert all(finals[c] == "abort" for c in (2, 3))  # queued behind the batch of two: never ran to the end
    assert sum(len(d.token_ids) for d in got if d.choice in (2, 3)) < 60
    assert_idle(engine)
    assert not engine.requests


def test_usage_total_counts_the_prompt_once_and_sums_completions_and_drafts():
    from sysinfer.server.choices import UsageTotal
    from sysinfer.engine.request_state import Delta, Usage
    total = UsageTotal()
    assert total.usage() is None
    total.add(Delta("", [], None))  # a delta without usage changes nothing
    total.add(Delta("", [], "stop", Usage(100, 7, 64, 3, 1), choice=1))
    total.add(Delta("", [], "length", Usage(100, 9, 96, 5, 2), choice=0))
    assert total.usage() == Usage(100, 16, 96, 8, 3)  # choice 0's prompt and cache figures; the rest summed
