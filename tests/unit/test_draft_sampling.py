"""Speculative sampling with a real draft distribution q (a draft model's, not prompt lookup's one-hot)
keeps the target's distribution: the acceptance rule alone (Sampler.verify with q), and through the
whole engine with a draft model whose q differs from the target's p everywhere (chi-square tests of
the joint distribution of four tokens, each shown to have the power to reject a wrong answer)."""

from __future__ import annotations

import numpy as np

from sysinfer.engine.llm_engine import LLMEngine
from sysinfer.engine.sampling import Sampler, SamplingParams
from test_speculative_sampling import (V, MarkovModel, chi2_999, chi_square, exact_joint,
                                      sampled_joint_counts)
from support.fake_model import FakeTokenizer

# The draft's next-token table: another random chain over the same vocabulary, so q != p on every row.
_rng = np.random.default_rng(11)
DRAFT_TABLE = np.log(_rng.dirichlet(np.ones(V) * 0.7, size=V) + 1e-9).astype(np.float32)
DRAFT_TABLE[:, 0] = -40.0


class MarkovDraft(MarkovModel):
    def step(self, *args):
        out = super(MarkovModel, self).step(*args)  # one-hot at each row's last token
        return DRAFT_TABLE[out.argmax(axis=1)]


def test_acceptance_rule_with_a_draft_distribution_gives_p():
    p_logits = np.log(np.array([0.05, 0.30, 0.10, 0.25, 0.02, 0.28]))
    q = np.array([0.30, 0.05, 0.25, 0.10, 0.20, 0.10])  # far from p: many rejections
    p = np.exp(p_logits) / np.exp(p_logits).sum()
    sampler = Sampler(SamplingParams(temperature=1.0, seed=3))
    draws = np.random.default_rng(4).choice(q.size, size=30000, p=q)
    counts = np.zeros(q.size, dtype=np.int64)
    accepted = 0
    for d in draws:
        token, ok = sampler.verify(p_logits, [], int(d), q)
        counts[token] += 1
        accepted += ok
    # sum over x of min(p, q) is the acceptance probability
    assert abs(accepted / draws.size - np.minimum(p, q).sum()) < 0.015
    stat, df = chi_square(counts, p)
    assert stat < chi2_999(df), (stat, df)
    # power: the same counts are far from q; and the likeliest slip in the rule (on rejection,
    # drawing from p instead of max(0, p - q)) would be caught
    assert chi_square(counts, q)[0] > chi2_999(df)
    rng = np.random.default_rng(5)
    slip = np.zeros(q.size, dtype=np.int64)
    for d in draws:
        slip[d if rng.random() < p[d] / q[d] else rng.choice(p.size, p=p)] += 1
    assert chi_square(slip, p)[0] > chi2_999(df)
    # what q buys: the one-hot rule is also exact for any draft, but accepts only sum(p q), not sum(min(p, q))
    one_hot = sum(sampler.verify(p_logits, [], int(d))[1] for d in draws[:10000]) / 10000
    assert abs(one_hot - (p * q).sum()) < 0.02 and one_hot < np.minimum(p, q).sum() - 0.2


def test_draft_model_sampling_keeps_the_joint_distribution():
    model = MarkovModel(n_kv_blocks=64, block_size=4, n_vocab=V, max_out_rows=16)
    draft = MarkovDraft(n_kv_blocks=64, block_size=4, n_vocab=V, max_out_rows=4)
    engine = LLMEngine(model, FakeTokenizer(), speculative=True, draft_model=draft, lookup_first=False,
                       draft_policy="always")
    n = 6000
    counts = sampled_joint_counts(engine, n)
    s = engine.stats
    assert s.draft_tokens > n and s.accepted_draft_tokens > n / 4, s  # drafts ran, many accepted
    assert s.accepted_draft_tokens < 0.8 * s.draft_tokens, s           # and many rejected (q != p)
    assert engine.blocks.num_free == engine.blocks.num_blocks
    assert engine.drafter.blocks.num_free == engine.drafter.blocks.num_blocks
    stat, df = chi_square(counts, exact_joint())
    assert stat < chi2_999(df), (stat, df)
    # power: a target with the likeliest path (3, then 1) 50% likelier is rejected
    wrong = exact_joint().reshape(V, V, V, V).copy()
    wrong[3, 1] *= 1.5
    wrong /= wrong.sum()
    assert chi_square(counts, wrong.reshape(-1))[0] > chi2_999(df)
