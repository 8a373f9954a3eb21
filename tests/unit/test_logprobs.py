"""Log probabilities (engine/logprobs.py, logprob_format.py) and logit_bias (engine/sampling.py),
on the fake model and the real SmolLM2 tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from support.fake_model import FakeModel, FakeTokenizer, expected_tokens
from support.model_files import smollm2_q4_1
from sysinfer.engine import request_state
from sysinfer.engine.llm_engine import LLMEngine
from sysinfer.engine.logprobs import token_logprob
from sysinfer.engine.sampling import Sampler, SamplingParams
from sysinfer.server.logprob_format import LogprobFormatter
from sysinfer.model.gguf_header import read_gguf_header
from sysinfer.model.tokenizer import Tokenizer


def log_softmax(row: np.ndarray) -> np.ndarray:
    row = row.astype(np.float64)
    return row - row.max() - np.log(np.exp(row - row.max()).sum())


@pytest.mark.parametrize("k", [0, 1, 5, 20])
def test_token_logprob_is_the_log_softmax_and_top_k_is_sorted(k):
    rng = np.random.default_rng(k)
    row = (rng.standard_normal(49152) * 4).astype(np.float32)
    token = int(rng.integers(row.size))
    got = token_logprob(row, token, k)
    reference = log_softmax(row)
    assert got.logprob == pytest.approx(reference[token], abs=1e-4)
    assert [t for t, _ in got.top] == list(np.argsort(-reference, kind="stable")[:k])
    assert [lp for _, lp in got.top] == pytest.approx(sorted(reference, reverse=True)[:k], abs=1e-4)
    assert np.exp(reference).sum() == pytest.approx(1.0)


def test_top_logprobs_ties_are_ordered_by_token_id():
    row = np.zeros(10, dtype=np.float32)
    row[8] = 1.0
    got = token_logprob(row, 3, 4)
    ids = [t for t, _ in got.top]
    assert ids[0] == 8 and ids[1:] == sorted(ids[1:]) and len(set(ids)) == 4  # equal logits: by id
    got = token_logprob(np.zeros(10, dtype=np.float32), 3, 4)
    assert all(lp == pytest.approx(-np.log(10)) for _, lp in got.top)


def _generate(params: SamplingParams, prompt=(1, 2, 3), model=None):
    engine = LLMEngine(model or FakeModel(), FakeTokenizer())
    deltas = list(engine.generate(list(prompt), params))
    return deltas


def test_engine_logprobs_one_per_generated_token_and_greedy_is_top_1():
    deltas = _generate(SamplingParams(max_tokens=8, logprobs=3))
    tokens = [t for d in deltas for t in d.token_ids]
    entries = [e for d in deltas for e in d.logprobs]
    assert tokens == expected_tokens([1, 2, 3], 8)
    assert [e.token_id for e in entries] == tokens
    # the fake model's row: 10.0 at the next token, 0 elsewhere (50 tokens)
    expected = 10.0 - np.log(np.exp(10.0) + 49)
    for e in entries:
        assert e.top[0][0] == e.token_id and len(e.top) == 3
        assert e.logprob == pytest.approx(expected, abs=1e-5)
        assert e.top[1][1] == pytest.approx(-np.log(np.exp(10.0) + 49), abs=1e-5)


def test_logprobs_come_from_the_raw_distribution_not_the_sampled_one():
    """Temperature, penalties and logit_bias change what is sampled, not the reported logprobs."""
    plain = _generate(SamplingParams(max_tokens=1, logprobs=2))[0].logprobs[0]
    token = plain.token_id
    other = 7 if token != 7 else 8
    biased = _generate(SamplingParams(max_tokens=1, logprobs=2, logit_bias={other: 100.0},
                                      temperature=0.5, repetition_penalty=1.3))[0].logprobs[0]
    assert biased.token_id == other
    assert biased.logprob == pytest.approx(-np.log(np.exp(10.0) + 49), abs=1e-5)  # other's raw logprob
    assert biased.top == plain.top


def test_a_stop_token_has_no_logprob_entry():
    class EosModel(FakeModel):  # ends every sequence after two tokens
        def step(self, *args):
            out = super().step(*args)
            if self.calls >= 2:
                out[:] = 0.0
                out[:, 0] = 10.0
            self.calls += 1
            return out
    model = EosModel()
    model.calls = 0
    deltas = _generate(SamplingParams(max_tokens=8, logprobs=0), model=model)
    assert deltas[-1].finish_reason == "stop"
    assert sum(len(d.token_ids) for d in deltas) == 3  # two tokens and the end-of-text token
    assert sum(len(d.logprobs) for d in deltas) == 2


def test_logprobs_cost_nothing_when_not_asked(monkeypatch):
    def forbidden(*a):
        raise AssertionError("logprobs computed for a request that did not ask")
    monkeypatch.setattr(request_state, "token_logprob", forbidden)
    deltas = _generate(SamplingParams(max_tokens=6))
    assert all(d.logprobs is None for d in deltas) and deltas[-1].finish_reason == "length"


def test_logit_bias_minus_100_bans_and_plus_100_forces():
    logits = np.array([0.0, 5.0, 4.9, 1.0, -3.0], dtype=np.float32)
    assert Sampler(SamplingParams()).sample(logits, []) == 1
    assert Sampler(SamplingParams(logit_bias={1: -100.0})).sample(logits, []) == 2
    assert Sampler(SamplingParams(logit_bias={4: 100.0})).sample(logits, []) == 4
    for seed in range(20):  # sampling too: a banned token never comes, a forced one always does
        assert Sampler(SamplingParams(temperature=1.5, seed=seed, logit_bias={1: -100.0, 2: -100.0})).sample(
            logits, []) not in (1, 2)
        assert Sampler(SamplingParams(temperature=1.5, seed=seed, logit_bias={4: 100.0})).sample(logits, []) == 4
    assert logits[1] == 5.0  # the caller's row is untouched


def test_logit_bias_through_the_engine():
    forced = _generate(SamplingParams(max_tokens=5, logit_bias={7: 100.0}))
    assert [t for d in forced for t in d.token_ids] == [7] * 5
    first = expected_tokens([1, 2, 3], 1)[0]
    banned = _generate(SamplingParams(max_tokens=1, logit_bias={first: -100.0}))
    assert banned[0].token_ids != [first]


@pytest.mark.parametrize("bad", [dict(logprobs=21), dict(logprobs=-1), dict(logit_bias={3: 100.5}),
                                 dict(logit_bias={-1: 1.0}), dict(logit_bias={3: float("nan")})])
def test_invalid_logprobs_and_bias_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SamplingParams(**bad)


@pytest.fixture(scope="module")
def smollm2():
    return Tokenizer.from_metadata(read_gguf_header(smollm2_q4_1()))


TEXT = "Hello 世界！😀 naïve café — 鲲鹏处理器"


def _entries(tok, text):
    return [token_logprob(np.zeros(tok.vocab_size, dtype=np.float32), t, 2) for t in tok.encode(text)]


def test_chat_bytes_reassemble_the_text_across_split_characters(smollm2):
    ids = smollm2.encode(TEXT)
    split = [i for i in ids if smollm2.token_bytes(i).decode("utf-8", errors="ignore") != smollm2.token_bytes(
        i).decode("utf-8", errors="replace")]
    assert split, "the sample text should have characters split over byte tokens"
    body = LogprobFormatter(smollm2, chat=True).format(_entries(smollm2, TEXT))
    assert bytes(b for e in body["content"] for b in e["bytes"]).decode() == TEXT
    assert body["refusal"] is None
    for e, i in zip(body["content"], ids):
        assert e["token"] == smollm2.token_bytes(i).decode("utf-8", errors="replace")
        assert len(e["top_logprobs"]) == 2 and set(e["top_logprobs"][0]) == {"token", "logprob", "bytes"}


def test_legacy_shape_and_text_offsets_across_chunks(smollm2):
    entries = _entries(smollm2, TEXT)
    fmt = LogprobFormatter(smollm2, chat=False)
    parts = [fmt.format(entries[:5]), fmt.format(entries[5:9]), fmt.format(entries[9:])]  # a stream's chunks
    whole = {k: [v for p in parts for v in p[k]] for k in parts[0]}
    assert len(whole["tokens"]) == len(whole["token_logprobs"]) == len(whole["top_logprobs"]) == len(entries)
    offsets = whole["text_offset"]
    assert offsets[0] == 0 and offsets == sorted(offsets)
    prefix = b""
    for off, e in zip(offsets, entries):  # each offset: the complete characters before the token
        assert off == len(prefix.decode("utf-8", errors="ignore"))
        prefix += smollm2.token_bytes(e.token_id)
    for tokens_top, token in zip(whole["top_logprobs"], whole["tokens"]):
        assert token in tokens_top and 1 <= len(tokens_top) <= 3  # the top 2 plus the sampled token


def test_a_token_with_no_probability_is_floored_not_infinite(smollm2):
    row = np.zeros(smollm2.vocab_size, dtype=np.float32)
    row[5] = -np.inf
    body = LogprobFormatter(smollm2, chat=True).format([token_logprob(row, 5, 0)])
    assert body["content"][0]["logprob"] == -9999.0


def test_speculation_gives_the_same_logprobs():
    """Drafted tokens verified in one step get their logprobs from their own rows. Every proposal is
    verified (draft_policy "always"): the default policy decides by the fake model's step timings,
    which made the count of accepted drafts a matter of the machine's load (CI: 10, the test wanted
    more)."""
    from test_engine import _PeriodicModel

    prompt = [5, 6, 7, 5, 6, 7, 5]
    runs = {}
    for speculative in (False, True):
        engine = LLMEngine(_PeriodicModel(n_kv_blocks=64, block_size=4, max_out_rows=16), FakeTokenizer(),
                           speculative=speculative, draft_policy="always")
        deltas = list(engine.generate(prompt, SamplingParams(max_tokens=30, logprobs=2)))
        runs[speculative] = ([t for d in deltas for t in d.token_ids], [e for d in deltas for e in d.logprobs],
                             engine.stats.accepted_draft_tokens)
    assert runs[True][2] > 10  # drafts were accepted
    assert runs[True][0] == runs[False][0] and runs[True][1] == runs[False][1]
    assert [e.token_id for e in runs[True][1]] == runs[True][0]


def test_padded_logits_rows_beyond_the_vocabulary_format_as_empty(smollm2):
    row = np.zeros(smollm2.vocab_size + 8, dtype=np.float32)  # some files pad the output matrix
    row[-1] = 5.0
    entry = token_logprob(row, smollm2.vocab_size + 7, 2)
    chat = LogprobFormatter(smollm2, chat=True).format([entry])["content"][0]
    assert chat["token"] == "" and chat["bytes"] == [] and chat["top_logprobs"][0]["token"] == ""
    legacy = LogprobFormatter(smollm2, chat=False).format([entry])
    assert legacy["tokens"] == [""] and legacy["text_offset"] == [0]
