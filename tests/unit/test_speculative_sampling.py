"""Speculative sampling through the whole engine keeps the target's distribution: at temperature 1,
the first four tokens of many seeded requests, drafted by prompt lookup and verified in one step
(the rows mapped to their drafts, the rejection rule, the token after a rejection, the rollback),
follow the model's exact joint distribution (chi-square test), and differ from a wrong target."""

from __future__ import annotations

import math

import numpy as np

from support.fake_model import FakeModel, FakeTokenizer
from sysinfer.engine.llm_engine import LLMEngine
from sysinfer.engine.sampling import SamplingParams

V = 8  # vocabulary; token 0 (end of text) is never likely
# TABLE[last token] = logits of the next token: the prompt's cycle 1 -> 2 -> 3 -> 1 (other tokens: the
# next one) with probability 0.5, the rest spread unevenly, so drafts are accepted and rejected.
_rng = np.random.default_rng(5)
TABLE = np.log(_rng.dirichlet(np.ones(V), size=V) * 0.5 + 1e-9).astype(np.float32)
for _t in range(V):
    TABLE[_t, {1: 2, 2: 3, 3: 1}.get(_t, _t % (V - 1) + 1)] = np.log(0.5)
TABLE[:, 0] = -40.0
PROMPT = [1, 2, 3, 1, 2, 3, 1, 2]  # prompt lookup drafts 3, 1, 2, ... after it
N_TOKENS = 4  # the first is sampled after the prefill, the other three can be drafts


class MarkovModel(FakeModel):
    """The next token's logits depend on the last token only (read back through the block table)."""

    @staticmethod
    def next_token(context, n_vocab):
        return context[-1]

    def step(self, *args):
        out = super().step(*args)  # one-hot at the last token of each row's context
        return TABLE[out.argmax(axis=1)]


def exact_joint() -> np.ndarray:
    """p(t1, t2, t3, t4) after PROMPT, flattened."""
    p = np.exp(TABLE - TABLE.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    # joint[a, b, c, d] = p(a | last) p(b | a) p(c | b) p(d | c)
    joint = p[PROMPT[-1]][:, None, None, None] * p[:, :, None, None] * p[None, :, :, None] * p[None, None, :, :]
    return joint.reshape(-1)


def chi2_999(df: int) -> float:
    """0.999 quantile of chi-square (Wilson-Hilferty; within 1% for df >= 10)."""
    z = 3.0902
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi_square(counts: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    """Pearson's statistic with cells expected under 5 pooled into one; (statistic, degrees of freedom)."""
    expected = probs * counts.sum()
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    keep = exp > 0
    return float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()), int(keep.sum()) - 1


def sampled_joint_counts(engine: LLMEngine, n: int) -> np.ndarray:
    """[V ** N_TOKENS] how often each sequence of N_TOKENS tokens came out of n seeded requests at T 1."""
    counts = np.zeros(V ** N_TOKENS, dtype=np.int64)
    for seed in range(n):
        out = [t for d in engine.generate(PROMPT, SamplingParams(temperature=1.0, seed=seed, max_tokens=N_TOKENS))
               for t in d.token_ids]
        assert len(out) == N_TOKENS
        counts[((out[0] * V + out[1]) * V + out[2]) * V + out[3]] += 1
    return counts


def test_speculative_sampling_keeps_the_joint_distribution():
    model = MarkovModel(n_kv_blocks=64, block_size=4, n_vocab=V, max_out_rows=16)
    engine = LLMEngine(model, FakeTokenizer(), speculative=True, draft_policy="always")
    n = 6000
    counts = sampled_joint_counts(engine, n)
    assert engine.stats.draft_tokens > n and engine.stats.accepted_draft_tokens > n / 3, engine.stats  # drafts ran
    assert engine.stats.accepted_draft_tokens < engine.stats.draft_tokens  # and were rejected too
    assert engine.blocks.num_free == engine.blocks.num_blocks
    stat, df = chi_square(counts, exact_joint())
    assert stat < chi2_999(df), (stat, df)
    # The test has power: a target with the drafted path 40% likelier is rejected.
    wrong = exact_joint().reshape(V, V, V, V).copy()
    wrong[3, 1] *= 1.4
    wrong /= wrong.sum()
    stat_wrong, df_wrong = chi_square(counts, wrong.reshape(-1))
    assert stat_wrong > chi2_999(df_wrong), (stat_wrong, df_wrong)


def test_lookup_drafts_leave_every_seeded_reply_as_plain_sampling_gives_it():
    """A prompt-lookup draft is accepted when plain sampling's own draw is the draft (Sampler.verify),
    so each seed gives the reply it gives without speculation, drafted or not."""
    model = MarkovModel(n_kv_blocks=64, block_size=4, n_vocab=V, max_out_rows=16)
    spec = LLMEngine(model, FakeTokenizer(), speculative=True, draft_policy="always")
    plain = LLMEngine(model, FakeTokenizer(), speculative=False)
    for seed in range(300):
        params = SamplingParams(temperature=1.0, seed=seed, max_tokens=N_TOKENS)
        assert ([t for d in spec.generate(PROMPT, params) for t in d.token_ids]
                == [t for d in plain.generate(PROMPT, params) for t in d.token_ids]), seed
    assert spec.stats.draft_tokens > 300 and 0 < spec.stats.accepted_draft_tokens < spec.stats.draft_tokens
