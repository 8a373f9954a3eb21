"""Prompt-lookup speculation on the real SmolLM2: greedy output identical to decoding without it
(short contexts; see the note in sysinfer/engine/prompt_lookup.py for long ones), drafts really
accepted on a prompt the answer quotes, and the KV cache exactly as without speculation afterwards."""

from __future__ import annotations

import pytest

from model_files import smollm2_q4_0
from sysinfer.engine.llm_engine import LLMEngine
from sysinfer.engine.prompt_lookup import K_MAX
from sysinfer.engine.sampling import SamplingParams
from sysinfer.model.tokenizer import Tokenizer

PROMPTS = [
    "Repeat exactly: the quick brown fox jumps over the lazy dog, the quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b\n\nRewrite this Python function with type hints.",
    "请用中文介绍一下北京。",
    "Name three primary colors.",
]


@pytest.fixture(scope="module")
def smollm2(load):
    model = load(smollm2_q4_0(), max_out_rows=2 * (1 + K_MAX), kv_blocks=128)
    return model, Tokenizer.from_metadata(model.metadata)


@pytest.mark.parametrize("text", PROMPTS)
def test_greedy_output_is_identical_with_speculation(smollm2, text):
    model, tok = smollm2
    prompt = tok.apply_chat_template([{"role": "user", "content": text}])
    runs = {}
    for speculative in (False, True):
        engine = LLMEngine(model, tok, speculative=speculative)
        deltas = list(engine.generate(prompt, SamplingParams(max_tokens=48)))
        runs[speculative] = ([t for d in deltas for t in d.token_ids], "".join(d.text for d in deltas), engine)
        assert engine.blocks.num_free == engine.blocks.num_blocks  # every block back, none leaked by a rollback
    assert runs[True][:2] == runs[False][:2]
    if text.startswith("Repeat"):
        assert runs[True][2].stats.accepted_draft_tokens >= 3, runs[True][2].stats  # the answer quotes the prompt


def test_seeded_sampling_with_speculation_is_reproducible(smollm2):
    model, tok = smollm2
    prompt = tok.apply_chat_template([{"role": "user", "content": PROMPTS[0]}])
    params = dict(temperature=0.8, seed=7, max_tokens=40)
    first, second = ([t for d in LLMEngine(model, tok, speculative=True).generate(prompt, SamplingParams(**params))
                      for t in d.token_ids] for _ in range(2))
    assert first == second and len(first) > 0
