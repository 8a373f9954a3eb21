"""Draft-model speculation on fake models (no native core): greedy output identical to plain
decoding whatever the draft proposes, alone and batched; the draft catches up on long prompts in
several calls; both models' blocks free after every request, aborts included; a full draft cache
only stops drafting; and the vocabulary check."""

from __future__ import annotations

import random
import zlib

import anyio
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.fake_model import FakeModel, FakeTokenizer, expected_tokens
from test_engine import assert_idle, run_requests
from sysinfer.engine.async_engine import AsyncEngine
from sysinfer.engine.llm_engine import LLMEngine
from sysinfer.engine.sampling import SamplingParams


class _WrongSometimes(FakeModel):
    """Agrees with FakeModel on about two contexts in three: drafts are accepted and rejected."""

    @staticmethod
    def next_token(context, n_vocab):
        right = FakeModel.next_token(context, n_vocab)
        h = zlib.crc32(np.asarray(context, dtype=np.int64).tobytes()[::-1])
        return right if h % 3 else 1 + (right % (n_vocab - 1))


def _engine(max_batch=1, draft_cls=FakeModel, draft_blocks=64, draft_step_tokens=64, lookup_first=False, **kw):
    model = FakeModel(n_kv_blocks=kw.pop("n_blocks", 64), block_size=4, max_out_rows=64)
    draft = draft_cls(n_kv_blocks=draft_blocks, block_size=4, max_step_tokens=draft_step_tokens, max_out_rows=8)
    engine = LLMEngine(model, FakeTokenizer(), max_batch=max_batch, speculative=True, draft_model=draft, draft_policy="always",
                       lookup_first=lookup_first, **kw)
    return engine, draft


def _run(engine, prompt, n):
    return [t for d in engine.generate(prompt, SamplingParams(max_tokens=n)) for t in d.token_ids]


def _assert_all_free(engine):
    assert engine.blocks.num_free == engine.blocks.num_blocks
    d = engine.drafter
    assert d.blocks.num_free == d.blocks.num_blocks and not d.tracks


def test_a_perfect_draft_is_always_accepted_and_costs_target_steps():
    engine, draft = _engine()
    prompt = [3, 9, 4, 7, 1]
    assert _run(engine, prompt, 40) == expected_tokens(prompt, 40)
    s = engine.stats
    assert s.draft_tokens > 30 and s.accepted_draft_tokens == s.draft_tokens, s
    assert s.steps < 40 / 3  # k grows to 8: about 40 / 9 verify steps after the prefill
    assert engine.drafter.stats.calls > s.steps  # k - 1 draft calls per verify step, plus catch-up
    _assert_all_free(engine)


@pytest.mark.parametrize("lookup_first", [False, True])
def test_a_wrong_draft_changes_nothing_but_speed(lookup_first):
    engine, _ = _engine(draft_cls=_WrongSometimes, lookup_first=lookup_first)
    rng = random.Random(1)
    for _ in range(8):
        prompt = [rng.randint(1, 49) for _ in range(rng.randint(1, 20))] * rng.randint(1, 3)  # lookup matches too
        n = rng.randint(1, 30)
        assert _run(engine, prompt, n) == expected_tokens(prompt, n)
        _assert_all_free(engine)
    s = engine.stats
    assert 0 < s.accepted_draft_tokens < s.draft_tokens, s


class _Periodic(FakeModel):
    """Continues any context with period 3: prompt lookup predicts it once a period has been seen."""

    @staticmethod
    def next_token(context, n_vocab):
        return context[-3]


def test_lookup_first_drafts_by_lookup_when_it_matches_and_by_the_model_otherwise():
    model = _Periodic(n_kv_blocks=64, block_size=4, max_out_rows=16)
    draft = FakeModel(n_kv_blocks=64, block_size=4, max_out_rows=1)  # wrong nearly always
    engine = LLMEngine(model, FakeTokenizer(), speculative=True, draft_model=draft, lookup_first=True,
                       draft_policy="always")
    prompt = [5, 6, 7]  # no n-gram repeats yet: the model drafts first
    tokens = list(prompt)
    while len(tokens) < 3 + 40:
        tokens.append(tokens[-3])
    assert _run(engine, prompt, 40) == tokens[3:]
    d = engine.drafter.stats
    assert d.calls > 0 and d.lookup_steps > 3, d
    assert engine.stats.accepted_draft_tokens > 25  # lookup's drafts of the period, all accepted
    _assert_all_free(engine)


def test_the_draft_catches_up_on_a_long_prompt_in_several_calls():
    engine, draft = _engine(draft_step_tokens=8, draft_blocks=40)
    prompt = list(range(1, 40))
    assert _run(engine, prompt, 12) == expected_tokens(prompt, 12)
    # the first draft comes after the prefill's token: the prompt and that token, 8 at a time
    assert [n for n, _ in draft.steps[:5]] == [8] * 5 and draft.steps[5][0] == 1
    _assert_all_free(engine)


def test_a_full_draft_cache_only_stops_drafting():
    engine, draft = _engine(draft_blocks=3)  # 12 token slots: not even the prompt
    prompt = list(range(1, 16))
    assert _run(engine, prompt, 10) == expected_tokens(prompt, 10)
    assert engine.stats.draft_tokens == 0 and not draft.steps
    _assert_all_free(engine)


class _BrokenDraft(FakeModel):
    def step(self, *args):
        out = super().step(*args)
        out[:, 3] = np.nan
        return out


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_draft_with_non_finite_logits_fails_no_request(temperature):
    engine, _ = _engine(draft_cls=_BrokenDraft)
    prompt = [4, 8, 15, 16, 23, 42]
    out = [t for d in engine.generate(prompt, SamplingParams(max_tokens=20, temperature=temperature, seed=1))
           for t in d.token_ids]
    assert len(out) == 20 and engine.stats.draft_tokens > 0
    if temperature == 0.0:
        assert out == expected_tokens(prompt, 20)
    _assert_all_free(engine)


class _NoFives:
    """A grammar state (the engine's view of structured/grammar_state.py) that forbids every token
    divisible by 5, end of text included: the draft model, which knows nothing of it, proposes them."""
    done = False

    def __init__(self):
        self.cut = 0  # drafts cut short at a forbidden token
        self.verified_forbidden: list[tuple] = []  # drafts that reached verification with a forbidden token

    def allowed(self):
        return np.arange(50) % 5 != 0  # [n_vocab] bool

    def consume(self, token):
        assert token % 5, f"forbidden token {token} consumed"

    def compute_masks(self, drafts=()):  # in the mask thread, whose errors the engine swallows: recorded
        if not all(t % 5 for t in drafts):
            self.verified_forbidden.append(tuple(drafts))

    def valid_prefix(self, tokens):
        n = next((i for i, t in enumerate(tokens) if t % 5 == 0), len(tokens))
        self.cut += n < len(tokens)
        return n

    def forced(self, limit):
        return []


@pytest.mark.parametrize("lookup_first", [False, True])
def test_a_constrained_request_drafts_up_to_the_first_forbidden_token(lookup_first):
    """The draft model's draft ends where the grammar forbids a token, and the output is what plain
    decoding under the same grammar gives."""
    outputs = []
    for speculative in (False, True):
        if speculative:
            engine, draft = _engine(draft_cls=_WrongSometimes, lookup_first=lookup_first)
        else:
            engine = LLMEngine(FakeModel(block_size=4, max_out_rows=64), FakeTokenizer())
        grammar = _NoFives()
        seqs = []
        for prompt in ([1, 2, 3, 4], [7, 8, 9, 7, 8, 9, 7, 8]):
            seq = engine.add_request(prompt, SamplingParams(max_tokens=30))
            seq.state.grammar = grammar
            seqs.append(seq)
        while engine.has_work():
            engine.step()
        outputs.append([seq.output_ids for seq in seqs])
        if speculative:
            assert engine.stats.accepted_draft_tokens > 0 and grammar.cut > 0, (engine.stats, grammar.cut)
            assert not grammar.verified_forbidden
            _assert_all_free(engine)
    assert outputs[0] == outputs[1]
    assert all(t % 5 for out in outputs[1] for t in out)


class _SaysEndEarly(FakeModel):
    """A draft that predicts the end of text whenever the context length is a multiple of 4."""

    @staticmethod
    def next_token(context, n_vocab):
        return 0 if len(context) % 4 == 0 else FakeModel.next_token(context, n_vocab)


class _Recording(FakeModel):
    def step(self, token_ids, *args):
        self.calls = getattr(self, "calls", []) + [list(token_ids)]
        return super().step(token_ids, *args)


def test_a_draft_ends_at_a_predicted_stop_token():
    """Drafting past a stop token is wasted (the reply would end there): the draft model stops, and
    the target verifies the stop token as the last draft."""
    target = _Recording(n_kv_blocks=64, block_size=4, max_out_rows=64)
    draft = _SaysEndEarly(n_kv_blocks=64, block_size=4, max_out_rows=8)
    engine = LLMEngine(target, FakeTokenizer(), speculative=True, draft_model=draft, lookup_first=False,
                       draft_policy="always")
    prompt = [3, 9, 4, 7, 1]
    assert _run(engine, prompt, 40) == expected_tokens(prompt, 40)  # the target never ends: every 0 rejected
    decode_calls = [c for c in target.calls[1:] if len(c) > 1]
    assert any(c[-1] == 0 for c in decode_calls)
    assert all(0 not in c[:-1] for c in decode_calls), decode_calls  # nothing drafted after a stop token
    _assert_all_free(engine)


def test_draft_model_needs_speculation():
    with pytest.raises(ValueError, match="speculative"):
        LLMEngine(FakeModel(), FakeTokenizer(), speculative=False, draft_model=FakeModel())


def test_abort_mid_request_frees_both_caches():
    engine, _ = _engine()
    gen = engine.generate([1, 2, 3, 4, 5], SamplingParams(max_tokens=200))
    for _, delta in zip(range(3), gen):
        pass
    assert engine.drafter.blocks.num_used > 0 and engine.blocks.num_used > 0
    gen.close()  # the caller leaves: the request ends as aborted
    _assert_all_free(engine)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_reqs=st.integers(1, 5), max_batch=st.integers(1, 4), n_blocks=st.integers(24, 60),
       draft_blocks=st.integers(4, 60), step_tokens=st.integers(8, 40), lookup_first=st.booleans(),
       seed=st.integers(0, 10_000))
def test_batched_with_aborts_every_output_is_the_models_and_every_block_returns(
        n_reqs, max_batch, n_blocks, draft_blocks, step_tokens, lookup_first, seed):
    """Under continuous batching (each sequence its own k and draft track, preemption when the
    target's blocks run out, a small draft cache), clients that leave mid-stream: outputs equal the
    target's greedy continuation and both caches are free at idle."""
    rng = random.Random(seed)
    requests = [([rng.randint(1, 49) for _ in range(rng.randint(1, 12))] * rng.randint(1, 2), rng.randint(1, 24))
                for _ in range(n_reqs)]
    model = FakeModel(n_kv_blocks=n_blocks, block_size=4, max_step_tokens=64, max_out_rows=64)
    draft = _WrongSometimes(n_kv_blocks=draft_blocks, block_size=4, max_step_tokens=16, max_out_rows=8)
    engine = AsyncEngine(model, FakeTokenizer(), max_batch=max_batch, max_step_tokens=step_tokens, speculative=True,
                         draft_model=draft, lookup_first=lookup_first)
    requests = [(p, n) for p, n in requests if len(p) + n <= (n_blocks - engine.blocks.watermark_blocks) * 4]
    aborts = {i: rng.randint(1, 5) for i in range(len(requests)) if rng.random() < 0.3}
    results = anyio.run(run_requests, engine, requests, aborts)
    for i, (prompt, n) in enumerate(requests):
        tokens, reason = results[i]
        want = expected_tokens(prompt, n)
        if i in aborts:
            assert tokens == want[: len(tokens)], i
        else:
            assert (tokens, reason) == (want, "length"), i
    assert_idle(engine)
    d = engine.core.drafter
    assert d.blocks.num_free == d.blocks.num_blocks and not d.tracks


def test_the_draft_kv_cache_is_sized_for_full_contexts_within_the_memory_budget(monkeypatch):
    from types import SimpleNamespace

    from sysinfer import config

    hp = SimpleNamespace(n_layer=2, n_head_kv=2, head_dim=64)
    cfg = config.ServerConfig(max_batch=2, ctx_size=4096).validate()
    per_block = config.kv_block_bytes(hp, cfg.block_size)
    monkeypatch.setattr(config, "available_memory_bytes", lambda: None)
    assert config.draft_kv_blocks(cfg, hp, 4096, 8, spoken_for=0) == 2 * 257  # two contexts of 4,096 + 8 tokens
    # 200 blocks' worth of memory left after what the target spoke for: half of it
    monkeypatch.setattr(config, "available_memory_bytes", lambda: 5 * 2**30 + 200 * per_block)
    assert config.draft_kv_blocks(cfg, hp, 4096, 8, spoken_for=5 * 2**30) == 100
