"""The drafting policy and the step-cost model, on fake cost curves and a fake clock (nothing here
depends on this machine's timings): the cost model's estimates converge on the curve; the policy
drafts when rows are cheap and drafts are accepted, stops when rows are dear and drafts rejected,
and starts again when the text starts quoting; greedy output never changes; a draft model is held
to the same decision."""

from __future__ import annotations

import random
import zlib

import numpy as np
import pytest

from support.fake_model import CostedModel, FakeClock, FakeModel, FakeTokenizer, expected_tokens
from sysinfer.engine.llm_engine import LLMEngine
from sysinfer.engine.sampling import SamplingParams
from sysinfer.engine.spec_policy import Acceptance, DraftPolicy
from sysinfer.engine.step_cost import MAX_AGE, StepCost

# Seconds per step of n rows: the Llama-3-8B shape before few-row kernels (issue 28: 2 rows 1.36x,
# 4 rows 1.94x, 8 rows 2.76x one row), and a small model whose rows are nearly free.
DEAR = {1: 1.0, 2: 1.36, 3: 1.65, 4: 1.94, 5: 2.15, 6: 2.36, 7: 2.56, 8: 2.76, 9: 2.96}
CHEAP = {n: 1.0 + 0.02 * (n - 1) for n in range(1, 10)}


def _curve(table):
    return lambda n: table[n] if n in table else 1.0 + 0.5 * n  # prefill steps: anything


def _learned(table, rounds=3):
    cost = StepCost()
    for _ in range(rounds):
        for n, seconds in table.items():
            cost.observe(n, seconds)
    return cost


def test_the_estimates_converge_on_the_curve_through_noise():
    rng = random.Random(0)
    cost = StepCost()
    for _ in range(200):
        n = rng.choice([1, 1, 1, 2, 4, 8])
        slow = 3.0 if rng.random() < 0.2 else 1.0  # a fifth of the steps slowed by another process
        cost.observe(n, DEAR[n] * slow * rng.uniform(0.98, 1.02))
    for n in (1, 2, 4, 8):
        assert cost.measured(n) == pytest.approx(DEAR[n], rel=0.05)
    # unmeasured counts lie between their measured neighbours; past the last, on its mean slope
    assert DEAR[2] < cost.estimate(3) < DEAR[4]
    assert cost.estimate(9) == pytest.approx(DEAR[8] + (DEAR[8] - 1.0) / 7, rel=0.05)


def test_old_timings_age_out_and_the_curve_follows_the_machine():
    cost = StepCost()
    for _ in range(20):
        cost.observe(1, 1.0)
        cost.observe(2, 1.2)
    for _ in range(MAX_AGE):
        cost.observe(1, 2.0)  # the machine got slower; two-row steps no longer measured
    assert cost.measured(1) == 2.0 and cost.measured(2) is None
    assert cost.estimate(2) > 2.0  # a guess from the current one-row cost, to be measured again


def test_nothing_is_guessed_without_a_measured_anchor():
    cost = StepCost()
    assert cost.estimate(1) is None and cost.estimate(5) is None
    cost.observe(3, 1.0)
    assert cost.estimate(2) is None and cost.estimate(4) is not None


def test_acceptance_expectation_follows_the_record_and_leans_on_the_prior_at_first():
    shared = Acceptance(decay=1.0)
    fresh = Acceptance(decay=0.8, prior=shared)
    assert fresh.expected(3) == pytest.approx([0.5, 0.75, 0.875])  # the starting guess
    fresh.record(1, 1)
    assert fresh.rates()[1] > 0.5  # an unreached position leans on the one before it
    for _ in range(30):
        fresh.record(4, 4)
    assert fresh.expected(4)[-1] > 3.5
    assert shared.expected(4)[-1] > 3.0  # a request's record feeds the engine-wide one
    for _ in range(30):
        fresh.record(4, 0)
    assert fresh.rates()[0] < 0.2  # decayed: the text stopped quoting


@pytest.mark.parametrize("table, rate, want", [
    (CHEAP, 0.9, 8), (CHEAP, 0.2, 1),   # cheap rows: even a poor draft pays a little
    (DEAR, 0.95, 8), (DEAR, 0.1, 0),    # dear rows: only a good one does
])
def test_the_policy_drafts_what_pays(table, rate, want):
    policy = DraftPolicy(_learned(table))
    history = Acceptance(decay=1.0)
    history.reached, history.accepted = [1000.0] * 8, [1000.0 * rate] * 8
    policy.begin(1)
    k = policy.decide(history.expected(8))
    assert k == want if want in (0, 8) else k >= want


def test_no_draft_before_a_plain_step_is_timed():
    policy = DraftPolicy(StepCost())
    policy.begin(1)
    assert policy.decide([1.0, 2.0, 3.0]) == 0
    always = DraftPolicy(StepCost(), policy="always")
    always.begin(1)
    assert always.decide([0.0, 0.0]) == 2
    with pytest.raises(ValueError, match="draft policy"):
        DraftPolicy(policy="sometimes")


def _quotes_after(start: int, prompt_len: int):
    """A model that writes noise for its first `start` tokens, then copies its prompt from the top."""
    def next_token(context, n_vocab):
        out = len(context) - prompt_len
        if out < start:
            return FakeModel.next_token(context, n_vocab)
        return context[(out - start) % prompt_len]
    return next_token


def _run(table, prompt, n, next_token=None, speculative=True, draft_policy="cost", **kw):
    clock = FakeClock()
    model = CostedModel(clock, _curve(table), next_token, n_vocab=50, max_out_rows=16, n_kv_blocks=256, **kw)
    engine = LLMEngine(model, FakeTokenizer(), speculative=speculative, draft_policy=draft_policy, clock=clock,
                       enable_prefix_cache=False)
    tokens = [t for d in engine.generate(prompt, SamplingParams(max_tokens=n)) for t in d.token_ids]
    return tokens, clock.now, engine


def test_on_text_that_quotes_nothing_dear_rows_are_not_paid_for():
    rng = random.Random(1)
    prompt = [rng.randint(1, 49) for _ in range(60)]
    plain, t_plain, _ = _run(DEAR, prompt, 400, speculative=False)
    always, t_always, _ = _run(DEAR, prompt, 400, draft_policy="always")
    spec, t_spec, engine = _run(DEAR, prompt, 400)
    assert spec == always == plain == expected_tokens(prompt, 400)
    assert t_always > 1.03 * t_plain  # verifying every chance match loses time on dear rows...
    assert t_spec < 1.01 * t_plain    # ...the policy stops paying for them
    assert engine.stats.draft_tokens < 0.2 * _run(DEAR, prompt, 400, draft_policy="always")[2].stats.draft_tokens


def test_cheap_rows_and_quoting_text_draft_and_the_policy_starts_when_quoting_starts():
    rng = random.Random(2)
    prompt = [rng.randint(1, 49) for _ in range(40)]
    quoting = _quotes_after(100, len(prompt))
    plain, t_plain, _ = _run(DEAR, prompt, 300, quoting, speculative=False)
    spec, t_spec, engine = _run(DEAR, prompt, 300, quoting)
    assert spec == plain
    assert t_spec < 0.7 * t_plain  # the 200 quoted tokens come several per step (the first 100: one)
    assert engine.stats.accepted_draft_tokens > 150
    # Before quoting starts the policy declined nearly everything (noise, dear rows)
    head, t_head, head_engine = _run(DEAR, prompt, 100, quoting)
    assert head_engine.stats.draft_tokens < 20 and t_head < 1.01 * _run(DEAR, prompt, 100, quoting, speculative=False)[1]
    cheap, t_cheap, _ = _run(CHEAP, prompt, 300, quoting)
    assert cheap == plain and t_cheap < t_spec  # on cheap rows drafts pay sooner and more


def test_batched_decisions_see_the_rows_of_the_step():
    policy = DraftPolicy(_learned(DEAR))
    history = Acceptance(decay=1.0)
    history.reached, history.accepted = [100.0] * 8, [60.0] * 8
    policy.begin(1)
    alone = policy.decide(history.expected(8))
    policy.begin(4)  # three other sequences' rows already share the step
    assert policy.decide(history.expected(8)) <= alone


class _Draft(CostedModel):
    """A draft model that is always right (it is the fake target) and costs what `cost` says."""


@pytest.mark.parametrize("draft_cost, pays", [(0.02, True), (1.0, False)])
def test_a_draft_model_is_held_to_the_same_decision(draft_cost, pays):
    clock = FakeClock()
    target = CostedModel(clock, _curve(CHEAP), n_kv_blocks=128, block_size=4, max_out_rows=16)
    draft = _Draft(clock, lambda n: draft_cost * (1 + 0.01 * n), n_kv_blocks=128, block_size=4, max_out_rows=8)
    engine = LLMEngine(target, FakeTokenizer(), speculative=True, draft_model=draft, lookup_first=False, clock=clock,
                       enable_prefix_cache=False)
    prompt = [3, 9, 4, 7, 1]
    tokens = [t for d in engine.generate(prompt, SamplingParams(max_tokens=200)) for t in d.token_ids]
    assert tokens == expected_tokens(prompt, 200)
    s = engine.stats
    if pays:  # a cheap, always-right draft: several tokens per step
        assert s.accepted_draft_tokens > 150 and s.steps < 60, s
    else:     # as dear as the target: after a first try, only the rare probe
        assert s.draft_tokens < 30, s
        assert clock.now < 1.1 * 200 * CHEAP[1]


def test_seeded_sampling_is_the_same_whatever_the_policy_does():
    """Lookup drafts are verified by plain sampling's own draw: one seed, one reply, drafted or not."""
    prompt = [1, 2, 3, 4, 5, 6, 7, 8] * 4
    replies = []
    for spec, policy in ((False, "cost"), (True, "always"), (True, "cost")):
        clock = FakeClock()
        model = CostedModel(clock, _curve(CHEAP), n_vocab=50, max_out_rows=16, n_kv_blocks=128)
        model.step = _soft(model.step)
        engine = LLMEngine(model, FakeTokenizer(), speculative=spec, draft_policy=policy, clock=clock)
        replies.append([t for d in engine.generate(prompt, SamplingParams(max_tokens=80, temperature=1.0, seed=5))
                        for t in d.token_ids])
    assert replies[0] == replies[1] == replies[2]


def _soft(step):
    """Spreads the fake model's certainty so sampling has a choice (the true token stays likeliest)."""
    def wrapped(*args):
        out = step(*args)
        return out / 4.0 + np.float32(0.5)
    return wrapped
