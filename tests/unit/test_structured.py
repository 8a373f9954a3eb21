"""Structured output and tools on the fake model: grammars hold whatever the model prefers, the masks
are computed during the step (one per verify row when drafting), constrained requests draft (the
lookup's tokens up to the first the grammar forbids, else the tokens it forces) and give what they
give without speculation, refusals name what they refuse, and the tool-call parser gives the same
calls streamed (any chunking) as whole."""

from __future__ import annotations

import json
import re
import time

import jsonschema
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from support.fake_model import FakeModel
from sysinfer.engine.llm_engine import LLMEngine
from sysinfer.engine.sampling import Sampler, SamplingError, SamplingParams
from sysinfer.structured import tool_parser as P
from sysinfer.structured import tools as T
from sysinfer.structured.constraints import ConstraintError, compile_constraint, from_request

# id 0 is the end of text; the others one character each: enough for JSON, numbers and words
CHARS = '{}[]":, .-0123456789abcdefghijklmnopqrstuvw\n<>/_'
N_VOCAB = 1 + len(CHARS)


class ByteTokenizer:
    """A one-character-per-token vocabulary with raw bytes, as our real tokenizers expose it."""
    vocab_size, eos_id, bos_id, stop_ids = N_VOCAB, 0, None, {0}

    def is_special(self, i: int) -> bool:
        return i == 0

    def token_bytes(self, i: int) -> bytes:
        return b"</s>" if i == 0 else CHARS[i - 1].encode()

    def encode(self, text: str, **_) -> list[int]:
        return [CHARS.index(c) + 1 for c in text if c in CHARS]

    def decode(self, ids, skip_special: bool = False) -> str:
        return "".join(CHARS[i - 1] for i in ids if i != 0)


TOK = ByteTokenizer()


def engine(**kw) -> LLMEngine:
    return LLMEngine(FakeModel(n_vocab=N_VOCAB, **kw), TOK, **kw and {})


def run(constraint, prompt=(5, 6, 7), **params) -> tuple[str, str]:
    eng = LLMEngine(FakeModel(n_vocab=N_VOCAB), TOK)
    params.setdefault("max_tokens", 200)
    deltas = list(eng.generate(list(prompt), SamplingParams(grammar=compile_constraint(TOK, constraint), **params)))
    return "".join(d.text for d in deltas), deltas[-1].finish_reason


SCHEMA = {"type": "object", "properties": {
    "kind": {"enum": ["cat", "dog"]},
    "n": {"type": "integer", "minimum": 0, "maximum": 99},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 2}},
    "required": ["kind", "n", "tags"], "additionalProperties": False}


@pytest.mark.parametrize("seed", range(12))
def test_json_schema_holds_whatever_the_model_prefers(seed):
    c = from_request(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}})
    text, reason = run(c, prompt=(seed + 1, 3), temperature=1.0, seed=seed)
    assert reason == "stop"
    jsonschema.validate(json.loads(text), SCHEMA)


def test_greedy_choice_regex_and_length():
    text, reason = run(from_request(guided_choice=["cat", "dog", "cow"]))
    assert text in ("cat", "dog", "cow") and reason == "stop"
    text, reason = run(from_request(guided_regex=r"[0-9]{3}-[a-c]{2}"), temperature=0.8, seed=1)
    assert re.fullmatch(r"[0-9]{3}-[a-c]{2}", text) and reason == "stop"
    text, reason = run(from_request(guided_json=SCHEMA), max_tokens=3)
    assert reason == "length" and len(text) == 3


class CountingMatcher:
    """A request's llguidance matcher that counts the masks computed with it (GrammarState computes
    each row's mask with unsafe_compute_mask_ptr)."""

    def __init__(self, inner):
        self.inner, self.masks = inner, 0

    def unsafe_compute_mask_ptr(self, *args):
        self.masks += 1
        return self.inner.unsafe_compute_mask_ptr(*args)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _counted(state):
    state.matcher = CountingMatcher(state.matcher)
    return state.matcher


def test_masks_are_ready_for_every_verify_row_when_the_step_returns():
    eng = LLMEngine(FakeModel(n_vocab=N_VOCAB), TOK, speculative=True, draft_policy="always")
    grammar = compile_constraint(TOK, from_request(guided_json=SCHEMA))
    seq = eng.add_request([1, 2, 3, 1, 2, 3, 1, 2], SamplingParams(max_tokens=50, grammar=grammar))
    counted = _counted(seq.state.grammar)
    drafted_steps = 0
    while not seq.finished:
        before = counted.masks
        plan = eng.plan()
        n_draft = plan[0].n_draft
        logits = eng.execute(plan)
        # one mask per verify row, computed in the mask thread during the step (not before it)
        assert counted.masks - before == 1 + n_draft
        drafted_steps += n_draft > 0
        before = counted.masks
        eng.postprocess(plan, logits)
        assert counted.masks == before  # sampling and verifying used the rows computed ahead
    assert drafted_steps > 3  # the schema forces keys and punctuation: those are drafted


def test_mask_rows_are_the_masks_after_each_draft_and_the_state_rolls_back():
    from sysinfer.structured.grammar_state import GrammarState
    matcher = compile_constraint(TOK, from_request(guided_json=SCHEMA))
    text = TOK.encode('{"kind": "dog", "n": 7')
    state = GrammarState(matcher, N_VOCAB)
    state.consume(text[0])
    drafts = text[1:8]
    assert state.valid_prefix(drafts + TOK.encode("}")) == len(drafts)  # '}' is forbidden before "n"
    counted = _counted(state)
    state.compute_masks(drafts)
    assert counted.masks == 1 + len(drafts)
    stepwise = GrammarState(matcher, N_VOCAB)
    stepwise.consume(text[0])
    for i, token in enumerate(drafts + [None]):
        assert np.array_equal(state.allowed(), stepwise.allowed()), i  # row i, without recomputing
        assert counted.masks == 1 + len(drafts), i
        if token is not None:
            state.consume(token)
            stepwise.consume(token)
    # a draft that leaves the draft's path: the rows are stale and the next mask is computed afresh
    other = GrammarState(matcher, N_VOCAB)
    counted = _counted(other)
    other.compute_masks(TOK.encode('{"ki'))
    other.consume(TOK.encode("{")[0])
    other.consume(TOK.encode('"')[0])
    computed = counted.masks
    lone = GrammarState(matcher, N_VOCAB)
    lone.consume(TOK.encode("{")[0]); lone.consume(TOK.encode('"')[0])
    assert np.array_equal(other.allowed(), lone.allowed())
    assert counted.masks == computed  # still on the draft's path: its row, not a new mask
    off = GrammarState(matcher, N_VOCAB)
    counted = _counted(off)
    off.compute_masks(TOK.encode('{ "k'))
    off.consume(TOK.encode("{")[0])
    off.consume(TOK.encode('"')[0])  # off the draft's path ('{"' where it had '{ ')
    computed = counted.masks
    assert np.array_equal(off.allowed(), lone.allowed())
    assert counted.masks == computed + 1


def test_a_draft_through_the_grammars_end_stops_there():
    from sysinfer.structured.grammar_state import GrammarState
    state = GrammarState(compile_constraint(TOK, from_request(guided_choice=["cat dog"])), N_VOCAB)
    draft = TOK.encode("cat dog") + [0]
    assert state.valid_prefix(draft) == len(draft)
    counted = _counted(state)
    state.compute_masks(draft)
    assert counted.masks == len(draft)  # no row after the grammar's end
    for token in TOK.encode("cat dog"):
        assert state.allowed()[token]
        state.consume(token)
    assert state.done and not state.matcher.is_error()


@pytest.mark.parametrize("constraint, prompt", [
    ({"guided_json": SCHEMA}, '{"kind": "dog", "n": 12, "tags": ["ab", "cd"]} {"kind": "cat", "n": 3, "tags": []}'),
    ({"guided_regex": r"(ab|cd)+-[0-9]{3}"}, "abcdabcd-123 abab"),
    ({"guided_choice": ["the quick brown dog", "the lame cat"]}, "quick brown"),
])
def test_constrained_drafts_give_what_decoding_without_them_gives(constraint, prompt):
    ids = TOK.encode(prompt)
    for model_seed in range(4):  # the fake model's preferences differ with the prompt's first token
        ids_i = [1 + model_seed] + ids
        outputs, stats = [], []
        for speculative in (False, True):
            eng = LLMEngine(FakeModel(n_vocab=N_VOCAB), TOK, speculative=speculative, draft_policy="always")
            grammar = compile_constraint(TOK, from_request(**constraint))
            deltas = list(eng.generate(ids_i, SamplingParams(max_tokens=60, grammar=grammar)))
            outputs.append(([t for d in deltas for t in d.token_ids], deltas[-1].finish_reason))
            stats.append(eng.stats)
            assert eng.blocks.num_free == eng.blocks.num_blocks
        assert outputs[0] == outputs[1] and outputs[1][1] in ("stop", "length")
        assert stats[1].draft_tokens > 0 and stats[1].accepted_draft_tokens > 0
        assert stats[1].steps < stats[0].steps


@pytest.mark.parametrize("seed", range(8))
def test_sampled_constrained_drafts_hold_the_schema(seed):
    eng = LLMEngine(FakeModel(n_vocab=N_VOCAB), TOK, speculative=True, draft_policy="always")
    prompt = TOK.encode('{"kind": "dog", "n": 12, "tags": ["ab", "cd"]}')
    grammar = compile_constraint(TOK, from_request(guided_json=SCHEMA))
    deltas = list(eng.generate([seed + 1] + prompt, SamplingParams(max_tokens=200, grammar=grammar,
                                                                   temperature=1.0, seed=seed)))
    assert deltas[-1].finish_reason == "stop"
    jsonschema.validate(json.loads("".join(d.text for d in deltas)), SCHEMA)
    assert eng.stats.accepted_draft_tokens > 0
    assert eng.blocks.num_free == eng.blocks.num_blocks


def test_sampler_mask():
    logits = np.array([5.0, 4.0, 3.0, 2.0], dtype=np.float32)
    allowed = np.array([False, False, True, True])
    assert Sampler(SamplingParams()).sample(logits, [], allowed) == 2
    s = Sampler(SamplingParams(temperature=1.5, top_k=3, seed=1))
    assert {s.sample(logits, [], allowed) for _ in range(200)} == {2, 3}
    with pytest.raises(SamplingError, match="allows no token"):
        Sampler(SamplingParams()).sample(logits, [], np.zeros(4, dtype=bool))


# ---- refusals ----

@pytest.mark.parametrize("schema, named", [
    ({"not": {}}, "not"), ({"type": "string", "format": "ssn"}, "ssn"),
    ({"type": "object", "dependentRequired": {"a": ["b"]}}, "dependentRequired"),
    ({"type": "string", "pattern": "a(?!b)"}, "look-around"),
])
def test_unsupported_features_are_named(schema, named):
    with pytest.raises(ConstraintError, match=re.escape(named)) as info:
        compile_constraint(TOK, from_request(guided_json=schema))
    assert info.value.param == "guided_json"


def test_hostile_inputs_are_refused_quickly():
    deep: dict = {"type": "integer"}
    for _ in range(100):
        deep = {"type": "array", "items": deep}
    start = time.perf_counter()
    for kw in ({"guided_json": deep}, {"guided_json": {"enum": list(range(40000))}},
               {"guided_regex": "a" * 5000}, {"guided_choice": ["x"] * 300}, {"guided_grammar": "s" * 70000}):
        with pytest.raises(ConstraintError):
            from_request(**kw)
    # within the size limits, a regex whose DFA has 2^20 states: llguidance builds states lazily, under
    # its per-token fuel, so compiling and following it stays cheap
    text, _ = run(from_request(guided_regex="(a|b)*a(a|b){20}"), max_tokens=60, temperature=1.0, seed=2)
    assert re.fullmatch("[ab]*", text)
    assert time.perf_counter() - start < 5
    with pytest.raises(ConstraintError, match="one output constraint"):
        from_request(guided_regex="a", guided_json={})


# ---- tools ----

FNS = [{"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"],
    "additionalProperties": False}}},
       {"type": "function", "function": {"name": "now"}}]


@pytest.mark.parametrize("syntax", [T.HERMES, T.LLAMA3_JSON], ids=lambda s: s.name)
@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "add"}}])
def test_forced_tool_calls_parse_and_validate(syntax, choice):
    plan = T.plan_from_request(FNS, choice, False)
    text, reason = run(T.tool_grammar(syntax, plan), temperature=1.0, seed=4)
    assert reason == "stop"
    content, calls = P.whole_calls(P.ToolCallParser(syntax, plan), text)
    assert not content and len(calls) == 1
    name = calls[0]["function"]["name"]
    assert name == "add" or (name == "now" and choice == "required")
    args = json.loads(calls[0]["function"]["arguments"])
    jsonschema.validate(args, FNS[0]["function"]["parameters"] if name == "add" else {"type": "object", "maxProperties": 0})


OUTPUTS = [
    (T.HERMES, 'Let me see.<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": {"x": "}"}}}\n</tool_call>\n'
               '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>'),
    (T.HERMES, "No call <tool here, just text."),
    (T.LLAMA3_JSON, '{"name": "add", "parameters": {"a": 1, "b": "\\"}"}}\n{"name": "now", "parameters": {}}'),
    (T.LLAMA3_JSON, "Plain {text} answer."),
]


@settings(max_examples=60, deadline=None)
@given(case=st.sampled_from(OUTPUTS), cuts=st.lists(st.integers(1, 200), max_size=12))
def test_streamed_calls_equal_whole_calls_for_any_chunking(case, cuts):
    syntax, text = case
    plan = T.plan_from_request(FNS, "auto", True)
    content_whole, calls_whole = P.whole_calls(P.ToolCallParser(syntax, plan), text)
    parser, content, calls = P.ToolCallParser(syntax, plan), "", {}
    points = sorted({c for c in cuts if c < len(text)}) + [len(text)]
    start = 0
    for end in points:
        got, deltas = parser.feed(text[start:end], final=end == len(text))
        content += got
        for d in deltas:
            if d.id is not None:
                assert d.index == len(calls) and d.name
                calls[d.index] = {"name": d.name, "arguments": ""}
            calls[d.index]["arguments"] += d.arguments
        start = end
    assert content == content_whole
    assert [(c["name"], c["arguments"]) for c in calls.values()] == \
        [(c["function"]["name"], c["function"]["arguments"]) for c in calls_whole]
    if "name" in text:
        assert calls and all(json.loads(c["arguments"]) is not None for c in calls.values())
    else:
        assert content == text and not calls


def test_plan_and_history():
    assert T.plan_from_request(FNS, "none", None) is None
    assert T.plan_from_request(None, None, None) is None
    assert T.plan_from_request([], None, None) is None  # no functions configured: a plain reply
    for bad, choice in (([], "required"), ([{"type": "function", "function": {"name": "a b"}}], None),
                        (FNS + FNS[:1], None)):
        with pytest.raises(ConstraintError):
            T.plan_from_request(bad, choice, None)
    plan = T.plan_from_request(FNS, "auto", True)
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+2?"},
               {"role": "assistant", "content": "", "tool_calls": [
                   {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "3"}]
    messages, template_tools = T.prepare_messages(T.HERMES, history, plan)
    assert template_tools is None and [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"].startswith("Be brief.") and '"name": "add"' in messages[0]["content"]
    assert messages[2]["content"] == '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    assert messages[3]["content"] == "<tool_response>\n3\n</tool_response>"
    messages, template_tools = T.prepare_messages(T.LLAMA3_JSON, history, plan)
    assert messages == history and [t["function"]["name"] for t in template_tools] == ["add", "now"]


def test_call_syntax_follows_the_template():
    from sysinfer.model.chat_template import BUILTIN_TEMPLATES

    class Tok:
        architecture, bos_id, eos_id, special_tokens = "llama", None, None, {}
        tokens: list = []

        def encode(self, text, **_):
            return list(range(len(text)))  # no tag is one token here

        def __init__(self, template):
            self.chat_template = template

    llama31 = "{% for t in tools or [] %}{{ t | tojson }}{% endfor %}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    qwen = llama31 + "{% if tools %}<tool_call>{% endif %}"
    assert T.choose_syntax(Tok(None)) is T.HERMES and BUILTIN_TEMPLATES["llama"]  # built-in: no tools
    assert T.choose_syntax(Tok(llama31)) == T.LLAMA3_JSON
    assert T.choose_syntax(Tok(qwen)) == T.HERMES_TEMPLATE
    # parallel calls by default only where the template writes back every call of a turn
    writes_calls = qwen + ("{% for m in messages %}{% for c in m.get('tool_calls') or [] %}{{ c.function.name }}"
                           "{% endfor %}{% endfor %}")
    writes_first = qwen + "{% for m in messages %}{{ (m.get('tool_calls') or [{}])[0].function }}{% endfor %}"
    assert not T.choose_syntax(Tok(qwen)).parallel_calls and not T.HERMES.parallel_calls
    assert T.choose_syntax(Tok(writes_calls)).parallel_calls
    assert not T.choose_syntax(Tok(writes_first)).parallel_calls


def test_tool_parameters_are_closed_to_keys_they_do_not_name():
    from sysinfer.structured.tools import closed_objects
    langchain_style = {"type": "object", "properties": {
        "city": {"type": "string"},
        "where": {"type": "object", "properties": {"lat": {"type": "number"}}},
        "tags": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}}},
        "either": {"anyOf": [{"type": "object", "properties": {"a": {"type": "integer"}}}, {"type": "null"}]},
        "properties": {"type": "object", "properties": {"x": {"type": "string"}}},  # a key named "properties"
        "free": {"type": "object", "additionalProperties": {"type": "string"}},     # open on purpose: kept
    }, "$defs": {"D": {"type": "object", "properties": {"d": {"type": "string"}}}}}
    closed = closed_objects(langchain_style)
    p = closed["properties"]
    assert closed["additionalProperties"] is False
    assert p["where"]["additionalProperties"] is False
    assert p["tags"]["items"]["additionalProperties"] is False
    assert p["either"]["anyOf"][0]["additionalProperties"] is False and p["either"]["anyOf"][1] == {"type": "null"}
    assert p["properties"]["additionalProperties"] is False and set(p) == set(langchain_style["properties"])
    assert p["free"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert closed["$defs"]["D"]["additionalProperties"] is False
    assert "additionalProperties" not in langchain_style  # the caller's schema is not changed
    assert closed_objects({"type": "string"}) == {"type": "string"}


def test_json_whitespace_is_bounded_as_llama_cpp_bounds_it():
    """At each place JSON allows whitespace: nothing, one space, or one line break and at most 20
    indent characters (no blank lines, no runs of spaces, no indent past 20)."""
    matcher = compile_constraint(TOK, from_request(response_format={"type": "json_object"}))
    for text, ok in [('{"a": 1}', True), ('{"a":1}', True), ('{\n  "a": [1, 2]\n}', True),
                     ('{\n' + ' ' * 20 + '"a": 1}', True), ('{\n' + ' ' * 21 + '"a": 1}', False),
                     ('{\n\n"a": 1}', False), ('{  "a": 1}', False), ('{"a":  1}', False)]:
        m = matcher.deep_copy()
        ids = TOK.encode(text)
        assert (m.validate_tokens(ids) == len(ids)) is ok, text


CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'


@pytest.mark.parametrize("parallel, calls", [(None, 1), (False, 1), (True, 2)])
def test_generic_format_makes_one_call_unless_parallel_calls_are_asked_for(parallel, calls):
    """parallel_tool_calls unset: the generic format (a model not trained on calls) allows one call,
    so a small model can't repeat its call until max_tokens; true allows more."""
    plan = T.plan_from_request(FNS, "required", parallel)
    matcher = compile_constraint(TOK, T.tool_grammar(T.HERMES, plan))
    two = TOK.encode(CALL + "\n" + CALL)
    assert matcher.deep_copy().validate_tokens(two) == (len(two) if calls == 2 else len(TOK.encode(CALL + "\n")))


@pytest.mark.parametrize("syntax, text", [
    (T.HERMES, CALL + '\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b'),
    (T.HERMES, CALL + '\n<tool_call>\n{"name": "now", "arguments": {'),
    (T.HERMES, CALL + '\n<tool_call>\n{"name": "now"'),
    (T.LLAMA3_JSON, '{"name": "add", "parameters": {"a": 1, "b": 2}}\n{"name": "add", "parameters": {"a": "x}'),
])
def test_a_call_cut_off_is_never_returned(syntax, text):
    """A reply cut by max_tokens inside a call: the complete calls before it are returned, the cut one
    is not (neither whole nor streamed: no delta of it is ever sent)."""
    plan = T.plan_from_request(FNS, "required", True)
    _, calls = P.whole_calls(P.ToolCallParser(syntax, plan), text)
    assert [c["function"]["name"] for c in calls] == ["add"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"a": 1, "b": 2}
    parser, streamed = P.ToolCallParser(syntax, plan), []
    for i in range(len(text)):
        streamed += parser.feed(text[i], final=i == len(text) - 1)[1]
    assert [(d.index, d.name) for d in streamed] == [(0, "add")] and json.loads(streamed[0].arguments)


def test_arguments_come_back_compact_whatever_whitespace_the_model_wrote():
    """The grammar allows a line break and an indent at each JSON whitespace place (SmolLM2 uses
    them); the arguments go out on one line as the README shows them, strings untouched."""
    plan = T.plan_from_request(FNS, "required", None)
    text = '<tool_call>\n{"name": "add", "arguments": {\n  "a": 1,\n  "b":2 , "c" : " x :\\" ,\\n "}\n}\n</tool_call>'
    _, calls = P.whole_calls(P.ToolCallParser(T.HERMES, plan), text)
    assert calls[0]["function"]["arguments"] == '{"a": 1, "b": 2, "c": " x :\\" ,\\n "}'
    assert json.loads(calls[0]["function"]["arguments"]) == {"a": 1, "b": 2, "c": ' x :" ,\n '}
    assert P.compact_json('[1 ,\n\t2.50e3,{"k" :[ ]}]') == '[1, 2.50e3, {"k": []}]'


@pytest.mark.parametrize("syntax, call, other", [
    (T.HERMES, CALL, '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 2}}\n</tool_call>'),
    (T.LLAMA3_JSON, '{"name": "add", "parameters": {"a": 1, "b": 2}}', '{"name": "add", "parameters": {"a": 2, "b": 2}}'),
])
def test_a_repeated_call_is_not_sent_again_and_says_so(syntax, call, other):
    """Parallel calls allowed: a different call goes out, the same call again (whitespace aside) is
    held back and `repeated` tells the server to end the reply (issue 25: a small model loops)."""
    plan = T.plan_from_request(FNS, "required", True)
    parser = P.ToolCallParser(syntax, plan)
    _, calls = P.whole_calls(parser, call + "\n" + other + "\n" + call.replace(", ", ",\n  "))
    assert [json.loads(c["function"]["arguments"])["a"] for c in calls] == [1, 2] and parser.repeated
    parser = P.ToolCallParser(syntax, plan)
    P.whole_calls(parser, call + "\n" + other)
    assert not parser.repeated
    parser = P.ToolCallParser(syntax, plan)  # the same arguments in another key order: the same call
    P.whole_calls(parser, call + "\n" + call.replace('"a": 1, "b": 2', '"b": 2, "a": 1'))
    assert parser.repeated


@pytest.mark.parametrize("speculative", [False, True])
def test_the_engine_ends_a_reply_at_a_repeated_call(speculative):
    """call_loop.py: the reply ends on the last token of the first repeated call ("stop", which the
    server reports as "tool_calls"), drafted or not (prompt lookup drafts the repeats)."""
    from support.fake_model import ScriptedModel
    from sysinfer.structured.call_loop import guard_calls

    other = CALL.replace('"a": 1', '"a": 2')
    script = TOK.encode("\n".join([CALL, other] + [CALL] * 6)) + [0]
    plan = T.plan_from_request(FNS, "required", True)
    grammar = guard_calls(compile_constraint(TOK, T.tool_grammar(T.HERMES, plan)), T.HERMES, plan, TOK)
    eng = LLMEngine(ScriptedModel(script, n_vocab=N_VOCAB), TOK, speculative=speculative, draft_policy="always")
    deltas = list(eng.generate([5, 6, 7], SamplingParams(max_tokens=400, grammar=grammar)))
    text = "".join(d.text for d in deltas)
    assert text == CALL + "\n" + other + "\n" + CALL[: CALL.rindex("}") + 1]
    assert deltas[-1].finish_reason == "stop" and deltas[-1].usage.completion_tokens == len(TOK.encode(text))
    assert not speculative or eng.stats.accepted_draft_tokens > 0


def test_call_loop_matcher_cuts_drafts_and_rolls_back():
    from sysinfer.structured.call_loop import CallLoopMatcher
    from sysinfer.structured.grammar_state import GrammarState

    plan = T.plan_from_request(FNS, "required", True)
    matcher = CallLoopMatcher(compile_constraint(TOK, T.tool_grammar(T.HERMES, plan)), T.HERMES, plan, TOK.token_bytes)
    state = GrammarState(matcher, N_VOCAB)
    for token in TOK.encode(CALL + "\n"):
        state.consume(token)
    again = TOK.encode(CALL + "\n" + CALL)
    end = len(TOK.encode(CALL[: CALL.rindex("}") + 1]))
    assert state.valid_prefix(again) == end  # a draft through the repeat stops on its last token
    state.compute_masks(again[:8])            # consumed, then rolled back: no trace
    assert not state.done and state.matcher.text.decode() == CALL + "\n"
    for token in again[:end]:
        assert not state.done
        state.consume(token)
    assert state.done and not state.matcher.inner.is_stopped()
    assert state.matcher.deep_copy().is_stopped()
