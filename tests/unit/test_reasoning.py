"""The thinking section of a reasoning model's reply (engine/reasoning.py, engine/request_state.py):
tags split across tokens and across stream chunks, a section never closed, repeated tags, a reply
that starts inside the section, the output grammar applied after it, the thinking budget."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sysinfer.engine.llm_engine import LLMEngine
from sysinfer.engine.reasoning import END, INSIDE, START, Markers, ReasoningTracker, markers_for
from sysinfer.engine.request_state import RequestState
from sysinfer.engine.sampling import SamplingParams
from sysinfer.structured.constraints import compile_constraint, from_request

CHARS = '{}[]":, .-0123456789abcdefghijklmnopqrstuvwxyz\n<>/_ABC'
THINK_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<think>\n{% endif %}"
TEXT_MARKERS = Markers(START, END, (1, 2, 3), (4, 5, 6))  # ids do not matter to the text tracker


class CharTokenizer:
    """One character per token (id 0 ends the text); with `tags`, `<think>` and `</think>` are single
    tokens too (as in Qwen3's vocabulary), else they are spelled character by character."""
    bos_id, eos_id, stop_ids, architecture = None, 0, {0}, "llama"

    def __init__(self, tags: bool, template: str | None = "</think> is this template's"):
        self.pieces = ["</s>"] + list(CHARS) + ([START, END] if tags else [])
        self.vocab_size = len(self.pieces)
        self.special_tokens = {START: self.pieces.index(START), END: self.pieces.index(END)} if tags else {}
        self.chat_template = template

    def is_special(self, i: int) -> bool:
        return i == 0

    def token_bytes(self, i: int) -> bytes:
        return self.pieces[i].encode()

    def encode(self, text: str, **_) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            tag = next((t for t in self.special_tokens if text.startswith(t, i)), None)
            if tag:
                ids.append(self.special_tokens[tag])
                i += len(tag)
            else:
                ids.append(self.pieces.index(text[i]))
                i += 1
        return ids

    def decode(self, ids, skip_special: bool = False) -> str:
        return "".join(self.pieces[i] for i in ids if i != 0)


def run_tracker(text: str, cuts: list[int], inside: bool = False, markers: Markers = TEXT_MARKERS):
    tracker, reasoning, answer, start = ReasoningTracker(markers, inside), "", "", 0
    for end in sorted({c for c in cuts if 0 < c < len(text)}) + [len(text)]:
        r, a = tracker.feed(text[start:end])
        reasoning, answer, start = reasoning + r, answer + a, end
    r, a = tracker.flush()
    return reasoning + r, answer + a


CASES = [  # (reply text, starts inside, reasoning, answer)
    ("<think>\nLet me see.\n</think>\n\nParis.", False, "Let me see.\n", "Paris."),
    ("Let me see.</think>\n\nParis.", True, "Let me see.", "Paris."),
    ("  <think>a</think>B<think>c</think>D", False, "ac", "BD"),       # a second section, also reasoning
    ("Plain answer with a <b>tag</b> and a <thin", False, "", "Plain answer with a <b>tag</b> and a <thin"),
    ("<think>never closed </thi", False, "never closed </thi", ""),     # max_tokens inside the section
    ("<think>\n</think>\n\n", False, "", ""),
    # a stray closing tag (no section open) is a marker, never the answer's text (issue 25's leftover)
    ("x</think>y", False, "", "xy"),
    ("<think>a</think>Paris.</think>\n\nParis.", False, "a", "Paris.Paris."),
    ("</think>\nok <b>", False, "", "ok <b>"),
    ("a </thin", False, "", "a </thin"),                                # a tag never finished stays text
]


@settings(max_examples=80, deadline=None)
@given(case=st.sampled_from(CASES), cuts=st.lists(st.integers(1, 60), max_size=10))
def test_tags_split_across_stream_chunks(case, cuts):
    text, inside, reasoning, answer = case
    assert run_tracker(text, cuts, inside) == (reasoning, answer)


def test_a_locked_answer_keeps_its_tags():
    tracker = ReasoningTracker(TEXT_MARKERS, inside=True)
    assert tracker.feed("hm</think>\n") == ("hm", "")
    tracker.lock()
    assert tracker.feed('{"a": "<think>x</think>"}') == ("", '{"a": "<think>x</think>"}')


@pytest.mark.parametrize("tags", [True, False], ids=["tag-tokens", "tag-text"])
def test_markers_are_the_vocabularys_own(tags):
    tok = CharTokenizer(tags)
    m = markers_for(tok)
    assert tok.decode(m.start_ids) == START and tok.decode(m.end_ids) == END
    assert len(m.end_ids) == (1 if tags else len(END))
    assert markers_for(CharTokenizer(tags, template="{{ messages }}")) is None or tags  # no tag: no thinking


def accept_all(state: RequestState, ids: list[int]) -> tuple[str, str, str | None]:
    answer, reason = "", None
    for n, token in enumerate(ids, start=1):
        text, reason = state.accept(token, n)
        answer += text
        if reason:
            break
    return state.take_reasoning(), answer, reason


@pytest.mark.parametrize("tags", [True, False], ids=["tag-tokens", "tag-text"])
def test_request_state_splits_tokens_and_counts_reasoning(tags):
    tok = CharTokenizer(tags)
    prompt = tok.encode("hi<think>\n")  # the template opened the section
    state = RequestState(tok, prompt, SamplingParams(reasoning=True, max_tokens=100))
    reasoning, answer, reason = accept_all(state, tok.encode("abc</think>\n\nok") + [0])
    assert (reasoning, answer, reason) == ("abc", "ok", "stop")
    assert state.reasoning_tokens == 3 + len(tok.encode(END))
    # max_tokens inside the section: all of it is reasoning, the answer is empty
    state = RequestState(tok, prompt, SamplingParams(reasoning=True, max_tokens=5))
    assert accept_all(state, tok.encode("abc</think>ok")) == ("abc</", "", "length") if not tags else \
        accept_all(state, tok.encode("abcde</think>ok")) == ("abcde", "", "length")
    # off (--reasoning-format none): untouched
    state = RequestState(tok, prompt, SamplingParams(reasoning=False, max_tokens=100))
    assert accept_all(state, tok.encode("abc</think>ok") + [0]) == ("", "abc</think>ok", "stop")


class ScriptModel:
    """Prefers script[i] at the reply's i-th token (the engine's masks may force another)."""

    def __init__(self, script: list[int], n_prompt: int, n_vocab: int):
        from support.fake_model import FakeModel

        self.inner = FakeModel(n_vocab=n_vocab, n_ctx=512)
        self.script, self.n_prompt = script, n_prompt
        for k in ("n_kv_blocks", "block_size", "n_ctx", "n_vocab", "max_step_tokens", "max_out_rows"):
            setattr(self, k, getattr(self.inner, k))

    def step(self, token_ids, positions, seq_starts, block_tables, context_lens, logits_rows):
        out = np.zeros((len(logits_rows), self.n_vocab), dtype=np.float32)
        for i, row in enumerate(logits_rows):
            k = positions[row] + 1 - self.n_prompt
            out[i, self.script[k] if k < len(self.script) else 0] = 10.0
        return out


def generate(tok, prompt: list[int], script: list[int], **params):
    eng = LLMEngine(ScriptModel(script, len(prompt), tok.vocab_size), tok)
    deltas = list(eng.generate(prompt, SamplingParams(reasoning=True, **params)))
    return "".join(d.reasoning for d in deltas), "".join(d.text for d in deltas), deltas[-1]


@pytest.mark.parametrize("tags", [True, False], ids=["tag-tokens", "tag-text"])
def test_the_budget_closes_the_section_with_the_models_own_tag(tags):
    tok = CharTokenizer(tags)
    prompt = tok.encode("q<think>\n")
    script = tok.encode("thinking on and on and on") + [0]
    reasoning, answer, last = generate(tok, prompt, script, max_tokens=60, reasoning_budget=5)
    assert reasoning == "think"
    assert last.usage.reasoning_tokens == 5 + len(tok.encode(END))
    # budget 0: the section is closed before the model writes anything in it
    reasoning, answer, last = generate(tok, prompt, script, max_tokens=60, reasoning_budget=0)
    assert reasoning == "" and last.usage.reasoning_tokens == len(tok.encode(END))


@pytest.mark.parametrize("tags", [True, False], ids=["tag-tokens", "tag-text"])
@pytest.mark.parametrize("opens", [True, False], ids=["prompt-opens", "model-opens"])
def test_the_output_grammar_applies_after_the_section(tags, opens):
    """Free reasoning (letters the JSON grammar forbids), then the answer under the grammar; the model
    may open the section itself (the grammar's tokens or the opening tag are allowed first)."""
    tok = CharTokenizer(tags)
    prompt = tok.encode("q<think>\n" if opens else "q")
    thought = "not json at all"
    script = tok.encode(("" if opens else START) + thought + END + '{"a": 1}') + [0]
    grammar = compile_constraint(tok, from_request(response_format={"type": "json_object"}))
    reasoning, answer, last = generate(tok, prompt, script, max_tokens=80, grammar=grammar)
    assert reasoning == thought and json.loads(answer) == {"a": 1} and last.finish_reason == "stop"
    # without the section, the grammar holds from the first token
    script = tok.encode('{"b": 2}') + [0]
    reasoning, answer, last = generate(tok, tok.encode("q"), script, max_tokens=80, grammar=grammar)
    assert reasoning == "" and json.loads(answer) == {"b": 2}


def test_inside_state_on_a_prompt_that_opens_the_section():
    tok = CharTokenizer(True)
    assert RequestState(tok, tok.encode("q<think>\n"), SamplingParams(reasoning=True)).reasoning.state == INSIDE
    closed = tok.encode("q<think>\n\n</think>\n\n")  # Qwen3 with thinking off: an empty section
    assert RequestState(tok, closed, SamplingParams(reasoning=True)).reasoning.state != INSIDE


@pytest.mark.parametrize("tags", [True, False], ids=["tag-tokens", "tag-text"])
def test_a_reply_that_stops_inside_the_section_answers_when_a_constraint_waits(tags):
    """The model ends its turn inside the section: under an output constraint the engine closes the
    section instead, and the constrained answer follows; without one, the reply ends there."""
    tok = CharTokenizer(tags)
    prompt = tok.encode("q<think>\n")
    script = tok.encode("abc") + [0] + [0] * (len(tok.encode(END)) - 1) + tok.encode('{"a": 1}') + [0]
    grammar = compile_constraint(tok, from_request(response_format={"type": "json_object"}))
    reasoning, answer, last = generate(tok, prompt, script, max_tokens=80, grammar=grammar)
    assert reasoning == "abc" and json.loads(answer) == {"a": 1} and last.finish_reason == "stop"
    reasoning, answer, last = generate(tok, prompt, script, max_tokens=80)
    assert (reasoning, answer, last.finish_reason) == ("abc", "", "stop")
