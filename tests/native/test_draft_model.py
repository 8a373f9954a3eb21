"""Draft-model speculation on the native core: greedy output token for token identical to decoding
without speculation, with SmolLM2 as its own draft (every draft accepted) and with a tiny synthetic
target + draft pair of one vocabulary (most drafts rejected), alone and batched; both models' block
managers back to their start after every request, an abort included; another vocabulary refused."""

from __future__ import annotations

import random

import pytest

from support.model_files import smollm2_q4_0, tiny_draft_model, tiny_model
from support.spec_prompts import CHINESE, EXTRACTIVE
from sysinfer.config import ServerConfig
from sysinfer.engine.llm_engine import LLMEngine
from sysinfer.engine.prompt_lookup import K_MAX
from sysinfer.engine.sampling import SamplingParams
from sysinfer.model.model_file import ModelLoadError, read_model_file
from sysinfer.model.tokenizer import Tokenizer
from sysinfer.model.vocab_check import vocabulary_mismatch
from sysinfer.startup import load_serving_model

BATCH = 3
MAX_TOKENS = 48
PROMPTS = [("colors", "Name three primary colors."),
           ("code", "def add(a, b):\n    return a + b\n\nRewrite this Python function with type hints.")
           ] + CHINESE[:1] + EXTRACTIVE[:1]  # the extractive prompt (~1,100 tokens) takes the draft 3 catch-up calls


def _free(engine: LLMEngine) -> tuple[int, int]:
    return engine.blocks.num_free, engine.drafter.blocks.num_free if engine.drafter else -1


def _alone(target, tok, prompts, draft=None, params=None, lookup_first=False):
    """Each prompt in turn; the outputs and both block managers' free counts after each request
    (lookup_first=False by default: the draft model drafts every step)."""
    engine = LLMEngine(target, tok, speculative=draft is not None, draft_model=draft, enable_prefix_cache=False,
                       lookup_first=lookup_first, draft_policy="always")
    start = _free(engine)
    outputs = []
    for prompt in prompts:
        outputs.append([t for d in engine.generate(prompt, params or SamplingParams(max_tokens=MAX_TOKENS))
                        for t in d.token_ids])
        assert _free(engine) == start  # both caches back to where they started
    return outputs, engine


def _batched(target, tok, prompts, draft, lookup_first=False, params=None):
    engine = LLMEngine(target, tok, max_batch=BATCH, speculative=True, draft_model=draft, enable_prefix_cache=False,
                       lookup_first=lookup_first, draft_policy="always")
    seqs = [engine.add_request(p, params or SamplingParams(max_tokens=MAX_TOKENS)) for p in prompts]
    while engine.has_work():
        engine.step()
    assert engine.blocks.num_free == engine.blocks.num_blocks
    assert engine.drafter.blocks.num_free == engine.drafter.blocks.num_blocks and not engine.drafter.tracks
    return [s.output_ids + ([] if s.finish_reason == "length" else [None]) for s in seqs], engine


def _same(alone_outputs, batched_outputs):
    """A batched sequence's output_ids hold no stop token: compare up to it."""
    for want, got in zip(alone_outputs, batched_outputs):
        if got[-1:] == [None]:
            assert got[:-1] == want[:-1] and want[-1] in (0, 1, 2)
        else:
            assert got == want


# ---- SmolLM2 as its own draft ----
# Every draft accepted holds only for drafts that get verified: a request that ends at a stop token
# inside a draft never verifies the drafts after it (the model keeps drafting past its own EOS), and
# the engine counts them as rejected (Usage.rejected_prediction_tokens: drafted, not in the output).
# So that claim is checked on output that runs through EOS; the output with stops is checked too.
THROUGH_EOS = SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module")
def smollm2(load):
    target = load(smollm2_q4_0(), n_ctx=2048, max_out_rows=BATCH * (1 + K_MAX), kv_blocks=480)
    draft = load(smollm2_q4_0(), n_ctx=2048, max_out_rows=BATCH, kv_blocks=480)
    tok = Tokenizer.from_metadata(target.metadata)
    prompts = [tok.apply_chat_template([{"role": "user", "content": text}]) for _, text in PROMPTS]
    plain, _ = _alone(target, tok, prompts)
    return target, draft, tok, prompts, plain


@pytest.fixture(scope="module")
def smollm2_through_eos(smollm2):
    target, _, tok, prompts, _ = smollm2
    return _alone(target, tok, prompts, params=THROUGH_EOS)[0]


def test_smollm2_drafting_for_itself_changes_nothing_and_is_always_right(smollm2, smollm2_through_eos):
    target, draft, tok, prompts, plain = smollm2
    outputs, engine = _alone(target, tok, prompts, draft)
    for (name, _), want, got in zip(PROMPTS, plain, outputs):
        assert got == want, f"{name}: the draft model changed the greedy output"
    outputs, engine = _alone(target, tok, prompts, draft, THROUGH_EOS)
    for (name, _), want, got in zip(PROMPTS, smollm2_through_eos, outputs):
        assert got == want, f"{name}: the draft model changed the greedy output (through EOS)"
    s = engine.stats
    # The draft computes what the target computes, so it proposes the target's own argmax: every
    # draft is accepted (the native step's rows don't depend on the step's make-up).
    assert s.draft_tokens > 50 and s.accepted_draft_tokens == s.draft_tokens, s
    assert engine.drafter.stats.calls > s.steps


def test_smollm2_lookup_first_then_the_draft_model_changes_nothing(smollm2):
    """The server's default with --draft-model: prompt lookup's drafts where it matches, the model's
    elsewhere; lookup's drafts may be rejected, the output may not change."""
    target, draft, tok, prompts, plain = smollm2
    outputs, engine = _alone(target, tok, prompts, draft, lookup_first=True)
    assert outputs == plain
    d = engine.drafter.stats
    assert d.lookup_steps > 5 and d.calls > 0 and engine.stats.accepted_draft_tokens > 50, d


def test_smollm2_batched_with_draft_model_equals_alone(smollm2, smollm2_through_eos):
    target, draft, tok, prompts, plain = smollm2
    outputs, engine = _batched(target, tok, prompts, draft)
    _same(plain, outputs)
    outputs, engine = _batched(target, tok, prompts, draft, params=THROUGH_EOS)
    assert outputs == smollm2_through_eos  # all of length MAX_TOKENS: no stop
    assert engine.stats.accepted_draft_tokens == engine.stats.draft_tokens > 50


def test_smollm2_abort_mid_request_frees_both(smollm2):
    target, draft, tok, prompts, _ = smollm2
    engine = LLMEngine(target, tok, speculative=True, draft_model=draft, lookup_first=False, draft_policy="always")
    gen = engine.generate(prompts[0], SamplingParams(max_tokens=200))
    for _, _delta in zip(range(4), gen):
        pass
    assert engine.drafter.blocks.num_used > 0
    gen.close()
    assert engine.blocks.num_used == 0 or engine.blocks.num_used == engine.blocks.num_cached
    assert engine.drafter.blocks.num_free == engine.drafter.blocks.num_blocks and not engine.drafter.tracks


def test_smollm2_seeded_sampling_with_draft_model_is_reproducible(smollm2):
    target, draft, tok, prompts, _ = smollm2
    params = dict(temperature=0.8, seed=11, max_tokens=32)
    runs = [_alone(target, tok, prompts[:1], draft, SamplingParams(**params)) for _ in range(2)]
    assert runs[0][0] == runs[1][0] and len(runs[0][0][0]) > 0
    assert runs[0][1].stats.draft_tokens > 0


# ---- a tiny synthetic pair of one vocabulary ----
@pytest.fixture(scope="module")
def tiny_pair(load):
    target = load(tiny_model("llama"), n_ctx=512, max_out_rows=BATCH * (1 + K_MAX), kv_blocks=128)
    draft = load(tiny_draft_model("same"), n_ctx=512, max_out_rows=BATCH, kv_blocks=128, max_step_tokens=64)
    rng = random.Random(3)
    prompts = [[1] + [rng.randint(3, 511) for _ in range(n)] for n in (5, 40, 150, 12)]  # 150: 3 catch-up calls
    return target, draft, Tokenizer.from_metadata(target.metadata), prompts


def test_tiny_pair_greedy_identical_alone_and_batched(tiny_pair):
    target, draft, tok, prompts = tiny_pair
    plain, _ = _alone(target, tok, prompts)
    outputs, engine = _alone(target, tok, prompts, draft)
    assert outputs == plain
    assert engine.stats.draft_tokens > 20  # random weights: drafts are mostly wrong, yet verified right
    batched, _ = _batched(target, tok, prompts, draft)
    _same(plain, batched)
    batched, _ = _batched(target, tok, prompts, draft, lookup_first=True)
    _same(plain, batched)


# ---- the vocabulary check ----
@pytest.mark.parametrize("vocab, message", [
    ("renamed", "token id 300 is '<renamed>' in the draft model, '<t300>' in the target"),
    ("retyped", "token id 400 has type 4 in the draft model, 1 in the target"),
    ("eos", "the EOS id is 5 in the draft model, 2 in the target"),
])
def test_another_vocabulary_is_refused_naming_the_first_difference(vocab, message):
    target = read_model_file(tiny_model("llama"))
    assert vocabulary_mismatch(target, read_model_file(tiny_draft_model("same"))) is None
    cfg = ServerConfig(model=tiny_model("llama"), draft_model=tiny_draft_model(vocab), threads=1, ctx_size=256).validate()
    with pytest.raises(ModelLoadError) as e:
        load_serving_model(cfg, progress=False)
    assert message in str(e.value) and "draft model" in str(e.value) and tiny_draft_model(vocab) in str(e.value)


def test_a_vocabulary_of_another_size_is_refused():
    cfg = ServerConfig(model=tiny_model("llama"), draft_model=tiny_model("llama-q4_1"), threads=1,
                       ctx_size=256).validate()
    with pytest.raises(ModelLoadError, match="the draft model has 256 tokens, the target 512"):
        load_serving_model(cfg, progress=False)


def test_a_draft_model_that_fails_to_load_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 64)
    for path, says in ((str(tmp_path / "missing.gguf"), "no such file"), (str(bad), str(bad))):
        cfg = ServerConfig(model=tiny_model("llama"), draft_model=path, threads=1, ctx_size=256).validate()
        with pytest.raises(ModelLoadError, match="^draft model: ") as e:
            load_serving_model(cfg, progress=False)
        assert says in str(e.value)


def test_load_serving_model_loads_the_draft_beside_the_target():
    cfg = ServerConfig(model=tiny_model("llama"), draft_model=tiny_draft_model("same"), threads=1, ctx_size=256,
                       max_batch=2, speculative="on").validate()
    loaded = load_serving_model(cfg, progress=False)
    d = loaded.draft
    assert d.n_ctx == loaded.model.n_ctx == 256 and d.max_out_rows == 2
    assert d.n_kv_blocks >= 2 * (256 + K_MAX) // 16  # two full contexts and a draft past the end
    assert d.n_threads == loaded.model.n_threads
