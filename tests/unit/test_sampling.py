"""Sampling: greedy at temperature 0, seeded reproducibility, filters never leave their set."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sysinfer.engine.sampling import Sampler, SamplingParams

logits_st = st.lists(st.floats(-20, 20, allow_nan=False, width=32), min_size=2, max_size=60).map(
    lambda v: np.array(v, dtype=np.float32))


@given(logits=logits_st)
def test_temperature_zero_is_argmax(logits):
    assert Sampler(SamplingParams(temperature=0.0)).sample(logits, []) == int(np.argmax(logits))


@settings(max_examples=50)
@given(logits=logits_st, seed=st.integers(0, 2**31), temp=st.floats(0.1, 2.0), top_p=st.floats(0.05, 1.0))
def test_same_seed_same_tokens(logits, seed, temp, top_p):
    params = SamplingParams(temperature=temp, top_p=top_p, seed=seed)
    a, b = Sampler(params), Sampler(params)
    generated_a, generated_b = [], []
    for _ in range(8):
        generated_a.append(a.sample(logits, generated_a))
        generated_b.append(b.sample(logits, generated_b))
    assert generated_a == generated_b


@settings(max_examples=60)
@given(logits=logits_st, k=st.integers(1, 10), seed=st.integers(0, 1000))
# found by hypothesis: after shifting by the best logit, 0 and 1.16e-37 tied and both were kept
@example(logits=np.array([0.0, 1.0, 1.16e-37], dtype=np.float32), k=2, seed=0)
def test_top_k_stays_in_top_k(logits, k, seed):
    sampler = Sampler(SamplingParams(temperature=1.5, top_k=k, seed=seed))
    allowed = set(np.argsort(-logits, kind="stable")[: min(k, logits.size)].tolist())
    kth = np.sort(logits)[::-1][min(k, logits.size) - 1]
    allowed |= set(np.nonzero(logits >= kth)[0].tolist())  # ties at the k-th value are kept
    for _ in range(10):
        assert sampler.sample(logits, []) in allowed


@settings(max_examples=60)
@given(logits=logits_st, top_p=st.floats(0.01, 0.99), seed=st.integers(0, 1000))
def test_top_p_stays_in_nucleus(logits, top_p, seed):
    sampler = Sampler(SamplingParams(temperature=1.0, top_p=top_p, seed=seed))
    probs = np.exp(logits.astype(np.float64) - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    cumulative_before = np.cumsum(probs[order]) - probs[order]
    nucleus = set(order[cumulative_before < top_p].tolist())
    for _ in range(10):
        assert sampler.sample(logits, []) in nucleus


@settings(max_examples=40)
@given(logits=logits_st, min_p=st.floats(0.05, 1.0), seed=st.integers(0, 1000))
def test_min_p_keeps_likely_tokens_only(logits, min_p, seed):
    sampler = Sampler(SamplingParams(temperature=1.0, min_p=min_p, seed=seed))
    probs = np.exp(logits.astype(np.float64) - logits.max())
    for _ in range(10):
        assert probs[sampler.sample(logits, [])] >= min_p * probs.max() * (1 - 1e-6)


def test_penalties_change_greedy_choice():
    logits = np.array([5.0, 4.9, 1.0], dtype=np.float32)
    assert Sampler(SamplingParams(repetition_penalty=1.5)).sample(logits, [0]) == 1
    assert Sampler(SamplingParams(frequency_penalty=0.05)).sample(logits, [0, 0, 0]) == 1
    assert Sampler(SamplingParams(presence_penalty=0.2)).sample(logits, [0]) == 1
    assert Sampler(SamplingParams(presence_penalty=0.2)).sample(logits, [2]) == 0
    # repetition penalty also covers the prompt
    assert Sampler(SamplingParams(repetition_penalty=1.5), prompt_ids=[0]).sample(logits, []) == 1


def test_sampler_does_not_modify_callers_logits():
    logits = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    Sampler(SamplingParams(temperature=0.7, repetition_penalty=2.0, seed=1)).sample(logits, [2])
    assert logits.tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("field,value", [("temperature", -1), ("top_p", 0.0), ("top_k", -3), ("min_p", 2.0),
                                         ("max_tokens", 0), ("repetition_penalty", 0), ("frequency_penalty", 3),
                                         ("stop", [""])])
def test_invalid_parameters_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


@pytest.mark.parametrize("draft", [0, 3, 7])
def test_speculative_acceptance_keeps_the_target_distribution(draft):
    """Sampler.verify with a drafted token: the tokens it returns follow the target distribution
    exactly (chi-square test over 20,000 draws), whether the draft is likely or not."""
    logits = np.log(np.array([0.30, 0.05, 0.10, 0.20, 0.02, 0.08, 0.15, 0.10], dtype=np.float32))
    sampler = Sampler(SamplingParams(temperature=1.0, seed=123))
    target = sampler.probabilities(logits, [])
    draws = np.array([sampler.verify(logits, [], draft)[0] for _ in range(20_000)])
    counts = np.bincount(draws, minlength=logits.size)
    expected = target * draws.size
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 24.32, chi2  # the 0.999 quantile of chi-square with 7 degrees of freedom
    accepted = np.mean(draws == draft)
    assert abs(accepted - target[draft]) < 0.02  # the draft comes back exactly as often as p(draft)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 10**6), size=st.sampled_from([5, 300, 3000]), top_p=st.floats(0.01, 0.999),
       ties=st.booleans())
def test_nucleus_prefix_equals_the_full_stable_sort(seed, size, top_p, ties):
    """most_likely_first() keeps exactly the tokens a full stable argsort keeps (ties included)."""
    from sysinfer.engine.sampling import most_likely_first

    rng = np.random.default_rng(seed)
    logits = rng.integers(-3, 3, size).astype(np.float64) if ties else rng.standard_normal(size) * 4
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    full = np.argsort(-probs, kind="stable")
    full_keep = full[np.cumsum(probs[full]) - probs[full] < top_p]
    fast = most_likely_first(probs, top_p)
    fast_keep = fast[np.cumsum(probs[fast]) - probs[fast] < top_p]
    assert list(fast) == list(full[: len(fast)])
    assert list(fast_keep) == list(full_keep)


def test_masked_keeps_the_vocabulary_size_and_never_allows_padding():
    """One masking helper (sampling._mask, the in-place twin, is gone): a vocabulary padded beyond
    the tokenizer's keeps its size, the padding at -inf."""
    from sysinfer.engine.sampling import masked

    logits = np.array([1.0, 5.0, 2.0, 9.0, 9.5], dtype=np.float32)  # 2 padding rows past the mask
    allowed = np.array([True, False, True])
    out = masked(logits, allowed)
    assert out.shape == logits.shape and out.dtype == logits.dtype
    assert out.tolist() == [1.0, -np.inf, 2.0, -np.inf, -np.inf] and logits[1] == 5.0  # a copy
    assert Sampler(SamplingParams(temperature=0.0)).sample(logits, [], allowed) == 2
    assert Sampler(SamplingParams(temperature=0.0, repetition_penalty=1.1)).sample(logits, [], allowed) == 2
