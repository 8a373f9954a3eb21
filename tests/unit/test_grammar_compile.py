"""Grammar compilation of untrusted constraints (issue 29 items 2 and 3): what can't be built, or
fails on its first tokens, is refused at compile time (a 400 naming the field, before the request
is queued) with a reason and never the grammar text; compiling is bounded in time and memory; a
tool's `$defs` resolve against its own parameters."""

from __future__ import annotations

import json
import time

import pytest

from sysinfer.structured import tools as T
from sysinfer.structured.constraints import (ConstraintError, _rss_bytes, compile_constraint, from_request,
                                             pointer_to, rebase_refs)
from test_structured import TOK

SELF_REF = {"$defs": {"n": {"$ref": "#/$defs/n"}}, "$ref": "#/$defs/n"}
NESTED = "((a{100}){100}){100}"


@pytest.mark.parametrize("fields, param, words", [
    ({"guided_json": SELF_REF}, "guided_json", "no output can ever complete it"),
    ({"guided_json": {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}},
     "guided_json", "no output can ever complete it"),
    ({"guided_regex": NESTED}, "guided_regex", "too complex"),
    ({"guided_json": {"type": "string", "pattern": f"^{NESTED}$"}}, "guided_json", "too complex"),
    ({"guided_grammar": f"start: X\nX: /{NESTED}/"}, "guided_grammar", "too complex"),
])
def test_grammars_that_fail_on_their_first_tokens_are_refused_when_compiled(fields, param, words):
    """These compiled, then failed at the engine's first mask (or first token), inside a step: a 500."""
    start = time.perf_counter()
    with pytest.raises(ConstraintError, match=words) as info:
        compile_constraint(TOK, from_request(**fields))
    assert info.value.param == param
    assert time.perf_counter() - start < 10  # 0.6 s on a loaded 2-core machine; 4-6 s and 165 MB before


def test_the_first_mask_is_built_at_compile_time_not_in_the_step():
    """The engine computes masks in its mask thread while the step waits for them: llguidance's lazy
    lexer build must be done by the time the request is queued (the engine's copy shares it)."""
    from sysinfer.structured.grammar_state import GrammarState

    constraint = from_request(guided_regex="((a{30}){30}){10}")  # 9,000 a: 40 ms of lexer at the first mask
    start = time.perf_counter()
    matcher = compile_constraint(TOK, constraint)
    compiled = time.perf_counter() - start
    state = GrammarState(matcher, TOK.vocab_size)
    start = time.perf_counter()
    state.compute_masks()
    first = time.perf_counter() - start
    assert first < max(0.002, compiled / 5), (first, compiled)


def test_compiling_hostile_grammars_keeps_no_memory():
    """Six refusals of the nested repeat leave the process where one left it (glibc's arenas kept
    80 MB of a server after six such requests; the lexer's memory is handed back now)."""
    def refuse():
        with pytest.raises(ConstraintError):
            compile_constraint(TOK, from_request(guided_regex=NESTED))

    refuse()
    before = _rss_bytes()
    for _ in range(6):
        refuse()
    assert (_rss_bytes() - before) / 2**20 < 24


def test_a_tools_refs_resolve_in_its_own_parameters():
    """Issue 29 item 3: `$ref: "#/$defs/city"` resolved against the call's schema, not the
    function's parameters: every pydantic / LangChain schema with $defs was refused."""
    city = {"$defs": {"city": {"type": "string"}}, "type": "object", "properties": {"c": {"$ref": "#/$defs/city"}},
            "required": ["c"]}
    tree = {"type": "object", "properties": {"v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#"}}},
            "required": ["v"]}
    for tools in ([city], [city, tree]):
        plan = T.plan_from_request([{"type": "function", "function": {"name": f"f{i}", "parameters": p}}
                                    for i, p in enumerate(tools)], "required", None)
        syntax = T.ToolSyntax("hermes", "arguments", "<", ">", "\n", False)
        matcher = compile_constraint(TOK, T.tool_grammar(syntax, plan))
        good = '<{"name": "f0", "arguments": {"c": "abc"}}>'
        bad = '<{"name": "f0", "arguments": {"c": 12}}>'
        assert matcher.validate_tokens(TOK.encode(good)) == len(TOK.encode(good))
        assert matcher.validate_tokens(TOK.encode(bad)) < len(TOK.encode(bad))
        if len(tools) == 2:
            nested = '<{"name": "f1", "arguments": {"v": 1, "kids": [{"v": 2, "kids": []}]}}>'
            assert matcher.validate_tokens(TOK.encode(nested)) == len(TOK.encode(nested))


def test_rebased_refs_point_where_the_schema_now_lives():
    schema = {"$ref": "#", "properties": {"a": {"$ref": "#/$defs/x"}, "b": {"$ref": "other.json#/y"}},
              "const": {"$ref": "#/data"}, "anyOf": [{"$ref": "#/$defs/z"}]}
    at = pointer_to("anyOf", 1, "properties", "a/b~c")
    assert at == "/anyOf/1/properties/a~1b~0c"
    assert rebase_refs(schema, at) == {
        "$ref": "#" + at, "properties": {"a": {"$ref": f"#{at}/$defs/x"}, "b": {"$ref": "other.json#/y"}},
        "const": {"$ref": "#/data"}, "anyOf": [{"$ref": f"#{at}/$defs/z"}]}


def test_refusals_never_print_the_internal_grammar():
    """A tool's bad reference answered with llguidance's whole Lark grammar after the reason."""
    plan = T.plan_from_request([{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"c": {"$ref": "#/$defs/missing"}}}}}], "required", None)
    syntax = T.ToolSyntax("hermes", "arguments", "<", ">", "\n", False)
    with pytest.raises(ConstraintError) as info:
        compile_constraint(TOK, T.tool_grammar(syntax, plan))
    message = str(info.value)
    assert "missing" in message and "start:" not in message and "%json" not in message and " | " not in message, message
    assert json.dumps(syntax.opener) not in message
