"""Speculation under output constraints on the real SmolLM2: a drafted token the grammar forbids
ends the draft, each verify row is masked as the grammar stands after the drafts before it, and the
tokens the grammar forces are drafted where prompt lookup finds nothing. Greedy output is token for
token what decoding without speculation gives, alone and batched; drafts are really accepted; every
block is free afterwards; the output parses and fits its schema."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from support.model_files import smollm2_q4_0
from sysinfer.engine.llm_engine import LLMEngine
from sysinfer.engine.prompt_lookup import K_MAX
from sysinfer.engine.sampling import SamplingParams
from sysinfer.model.tokenizer import Tokenizer
from sysinfer.structured.constraints import compile_constraint, from_request

ORDER = ("Order note: customer Margaret Hamilton (account MH-20931) of 14 Elm Street, Boston asked us on "
         "2024-03-18 to replace the part KX-2291-B in her Model 7 espresso machine, serial SN-7781-QQ-003. "
         "She prefers a call back on +1 617 555 0142.")
SCHEMA = {"type": "object", "properties": {
    "customer": {"type": "string", "maxLength": 40},
    "account": {"type": "string", "maxLength": 20},
    "part": {"type": "string", "maxLength": 20},
    "serial": {"type": "string", "maxLength": 24},
    "phone": {"type": "string", "maxLength": 24}},
    "required": ["customer", "account", "part", "serial", "phone"], "additionalProperties": False}
CASES = [
    ("json", f"{ORDER}\n\nExtract the customer, account, part, serial and phone as JSON.", {"guided_json": SCHEMA}),
    ("regex", f"{ORDER}\n\nWhat is the serial number? Answer with the serial only.", {"guided_regex": r"SN-[0-9]{4}-[A-Z]{2}-[0-9]{3}"}),
    ("choice", f"{ORDER}\n\nWhich city is the customer in?", {"guided_choice": ["Boston, Massachusetts", "Chicago, Illinois"]}),
]
MAX_TOKENS = 160
BATCH = 3


@pytest.fixture(scope="module")
def smollm2(load):
    model = load(smollm2_q4_0(), n_ctx=1024, max_out_rows=BATCH * (1 + K_MAX), kv_blocks=240)
    tok = Tokenizer.from_metadata(model.metadata)
    prompts = [tok.apply_chat_template([{"role": "user", "content": text}]) for _, text, _ in CASES]
    return model, tok, prompts


def params(tok, constraint) -> SamplingParams:
    return SamplingParams(max_tokens=MAX_TOKENS, grammar=compile_constraint(tok, from_request(**constraint)))


@pytest.fixture(scope="module")
def alone(smollm2):
    model, tok, prompts = smollm2
    runs = {}
    for speculative in (False, True):
        engine = LLMEngine(model, tok, speculative=speculative, enable_prefix_cache=False, draft_policy="always")
        outputs = []
        for prompt, (_, _, constraint) in zip(prompts, CASES):
            deltas = list(engine.generate(prompt, params(tok, constraint)))
            outputs.append(([t for d in deltas for t in d.token_ids], "".join(d.text for d in deltas),
                            deltas[-1].finish_reason))
            assert engine.blocks.num_free == engine.blocks.num_blocks
        runs[speculative] = outputs, engine.stats
    return runs


def test_constrained_greedy_output_is_identical_with_speculation(alone):
    (plain, _), (spec, stats) = alone[False], alone[True]
    for (name, _, _), a, b in zip(CASES, plain, spec):
        assert a == b, f"{name}: speculation changed the constrained greedy output"
        assert b[2] == "stop", (name, b)
    json_text, serial, city = (text for _, text, _ in spec)
    jsonschema.validate(json.loads(json_text), SCHEMA)
    assert re.fullmatch(r"SN-[0-9]{4}-[A-Z]{2}-[0-9]{3}", serial)
    assert city in ("Boston, Massachusetts", "Chicago, Illinois")
    # keys, quotes and the serial's fixed letters are forced, values quote the prompt: most drafts hold
    assert stats.draft_tokens > 10 and stats.accepted_draft_tokens >= 0.5 * stats.draft_tokens, stats
    assert stats.steps < alone[False][1].steps


def test_batched_constrained_drafts_equal_alone(smollm2, alone):
    model, tok, prompts = smollm2
    engine = LLMEngine(model, tok, max_batch=BATCH, speculative=True, enable_prefix_cache=False,
                       draft_policy="always")
    seqs = [engine.add_request(p, params(tok, c)) for p, (_, _, c) in zip(prompts, CASES)]
    while engine.has_work():
        engine.step()
    for (name, _, _), seq, (want, _, reason) in zip(CASES, seqs, alone[False][0]):
        assert seq.finish_reason == reason == "stop", (name, seq.finish_reason)
        assert seq.output_ids == [t for t in want if not seq.state.is_stop_token(t)], name
    assert engine.stats.accepted_draft_tokens > 0
    assert engine.blocks.num_free == engine.blocks.num_blocks


def test_sampled_constrained_drafts_fit_the_schema_and_repeat_with_the_seed(smollm2):
    model, tok, prompts = smollm2
    texts = []
    for _ in range(2):
        engine = LLMEngine(model, tok, speculative=True, draft_policy="always")
        p = params(tok, CASES[0][2])
        p.temperature, p.seed = 0.9, 11
        texts.append("".join(d.text for d in engine.generate(prompts[0], p)))
        assert engine.stats.accepted_draft_tokens > 0
    assert texts[0] == texts[1]
    jsonschema.validate(json.loads(texts[0]), SCHEMA)
