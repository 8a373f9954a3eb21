"""Speculation and output constraints on the Qwen architectures (issue 24's test list: "speculation and
grammar constraints on the new architectures, as the existing suites do for llama"; those suites run
the real SmolLM2). Tiny random qwen2 / qwen3 / qwen3moe files carrying Qwen3's real vocabulary, so
the grammars compile against a real byte-level tokenizer: greedy output with prompt-lookup
speculation token for token that of plain decoding, alone and batched, free and under a regex and a
choice; drafts verified and accepted (a random model's greedy reply loops, which lookup predicts);
constrained output fits; every KV block free afterwards."""

from __future__ import annotations

import re
import pytest

from support.model_files import qwen_vocab_tiny
from sysinfer.engine.llm_engine import LLMEngine
from sysinfer.engine.prompt_lookup import K_MAX
from sysinfer.engine.sampling import SamplingParams
from sysinfer.model.tokenizer import Tokenizer
from sysinfer.structured.constraints import compile_constraint, from_request

ARCHS = ["qwen2", "qwen3", "qwen3moe"]
PROMPTS = ["Repeat after me: one two three, one two three, one two three.",
           "请把这句话重复三遍：今天天气很好。",
           "def f(x):\n    return x * 2\n\nprint(f(2), f(3), f(4))"]
CONSTRAINTS = [{"guided_regex": r"[0-9]{3}-[a-z]{2,6}-[0-9]{2}"},
               {"guided_choice": ["north wind", "south wind", "east wind"]},
               {}]
MAX_TOKENS = 40
BATCH = 3


@pytest.fixture(scope="module", params=ARCHS)
def model(request, load):
    m = load(qwen_vocab_tiny(request.param), n_ctx=512, max_out_rows=BATCH * (1 + K_MAX), kv_blocks=96)
    assert m.metadata["general.architecture"] == request.param
    tok = Tokenizer.from_metadata(m.metadata)
    prompts = [tok.apply_chat_template([{"role": "user", "content": p}], variables={"enable_thinking": False})
               for p in PROMPTS]
    return m, tok, prompts


def params(tok, constraint: dict) -> SamplingParams:
    grammar = compile_constraint(tok, from_request(**constraint)) if constraint else None
    return SamplingParams(max_tokens=MAX_TOKENS, grammar=grammar)


def run_alone(m, tok, prompts, speculative: bool):
    engine = LLMEngine(m, tok, speculative=speculative, enable_prefix_cache=False, draft_policy="always")
    outputs = []
    for prompt, constraint in zip(prompts, CONSTRAINTS):
        deltas = list(engine.generate(prompt, params(tok, constraint)))
        outputs.append(([t for d in deltas for t in d.token_ids], "".join(d.text for d in deltas)))
        assert engine.blocks.num_free == engine.blocks.num_blocks
    return outputs, engine.stats


def test_speculation_changes_nothing_free_or_constrained_alone_and_batched(model):
    m, tok, prompts = model
    plain, plain_stats = run_alone(m, tok, prompts, False)
    spec, stats = run_alone(m, tok, prompts, True)
    assert spec == plain
    assert stats.draft_tokens > 0 and stats.accepted_draft_tokens > 0, stats
    assert stats.steps < plain_stats.steps
    regex_text, choice_text, _ = (text for _, text in spec)
    assert re.fullmatch(CONSTRAINTS[0]["guided_regex"], regex_text), regex_text
    assert choice_text in CONSTRAINTS[1]["guided_choice"]

    engine = LLMEngine(m, tok, max_batch=BATCH, speculative=True, enable_prefix_cache=False, draft_policy="always")
    seqs = [engine.add_request(p, params(tok, c)) for p, c in zip(prompts, CONSTRAINTS)]
    while engine.has_work():
        engine.step()
    for seq, (want, _) in zip(seqs, plain):
        assert seq.output_ids == [t for t in want if not seq.state.is_stop_token(t)]
    assert engine.stats.accepted_draft_tokens > 0
    assert engine.blocks.num_free == engine.blocks.num_blocks
