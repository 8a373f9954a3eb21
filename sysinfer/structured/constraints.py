"""A request's output constraint, from OpenAI's `response_format` or vLLM's `guided_*` fields, compiled
by llguidance into a matcher over our vocabulary.

Requests are untrusted: the inputs are bounded in size and nesting before llguidance sees them, and
the compiler and matcher run under tight parser limits (lexer states, grammar size, work per token),
so a hostile schema is refused in milliseconds. Anything llguidance cannot enforce (an unknown
keyword such as `not`, an unknown string `format`, a look-around in a `pattern`) is a
ConstraintError naming it: a schema is never silently loosened.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import llguidance

from .vocabulary import grammar_tokenizer

MAX_SCHEMA_CHARS = 64 * 1024   # a JSON schema, serialized
MAX_SCHEMA_DEPTH = 40          # nested objects/arrays in the schema document (about 20 levels of properties)
MAX_PATTERN_CHARS = 4096       # guided_regex
MAX_GRAMMAR_CHARS = 64 * 1024  # guided_grammar
MAX_CHOICES = 256              # guided_choice entries
MAX_CHOICE_CHARS = 1024        # one guided_choice entry
# JSON whitespace, as llama.cpp's JSON grammar bounds it: at each place JSON allows whitespace, nothing,
# one space, or one line break and at most 20 indent characters. A small model can then neither loop
# on blank lines nor indent deeper and deeper until max_tokens (it still may nest, but on one line);
# a request may change it with the schema's "x-guidance" key. vLLM's `disable_any_whitespace` is the
# same idea taken further (no whitespace at all).
JSON_OPTIONS = {"whitespace_pattern": r"(?:\x20|\x0A[\x20\x09]{0,20})"}


def parser_limits() -> llguidance.LLParserLimits:
    """llguidance's limits for untrusted grammars: compile work, memory (lexer states are 1-2 kB
    each) and the work of one token's mask (its fuel runs at roughly 14k/ms)."""
    return llguidance.LLParserLimits(max_items_in_row=2000, initial_lexer_fuel=1_000_000, step_lexer_fuel=200_000,
                                     step_max_items=50_000, max_lexer_states=20_000, max_grammar_size=200_000,
                                     verbose_errors=False)


class ConstraintError(ValueError):
    """A constraint the server refuses (400): `param` names the request field."""

    def __init__(self, message: str, param: str, code: str = "invalid_constraint"):
        super().__init__(message)
        self.param, self.code = param, code


@dataclass(frozen=True)
class Constraint:
    """An llguidance grammar (its JSON serialization) and what the request asked for, for messages."""
    grammar: str
    kind: str    # "json_schema", "json_object", "regex", "choice", "grammar", "tools"
    param: str   # the request field it came from


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value, stopping as soon as it passes limit (iterative: no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def json_schema_grammar(schema: Any, param: str) -> str:
    """A JSON schema (a dict, or its text) as an llguidance grammar, after the size and depth checks."""
    if isinstance(schema, str):
        if len(schema) > MAX_SCHEMA_CHARS:
            raise ConstraintError(f"the JSON schema is over {MAX_SCHEMA_CHARS} characters", param, "schema_too_large")
        try:
            schema = json.loads(schema)
        except ValueError:
            raise ConstraintError("the JSON schema is not valid JSON", param) from None
    if isinstance(schema, bool):
        schema = {} if schema else {"not": {}}
    if not isinstance(schema, dict):
        raise ConstraintError("the JSON schema must be an object", param)
    if _depth(schema, MAX_SCHEMA_DEPTH) > MAX_SCHEMA_DEPTH:
        raise ConstraintError(f"the JSON schema is nested more than {MAX_SCHEMA_DEPTH} levels deep", param,
                              "schema_too_large")
    text = json.dumps(schema)
    if len(text) > MAX_SCHEMA_CHARS:
        raise ConstraintError(f"the JSON schema is over {MAX_SCHEMA_CHARS} characters", param, "schema_too_large")
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(text, defaults=JSON_OPTIONS)
    except ValueError as e:
        raise ConstraintError(f"the JSON schema can't be used: {str(e)[:300]}", param) from None


def _response_format(rf: Any) -> Constraint | None:
    if not isinstance(rf, dict):
        raise ConstraintError("response_format must be an object", "response_format")
    kind = rf.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return Constraint(json_schema_grammar({"type": "object"}, "response_format"), "json_object", "response_format")
    if kind == "json_schema":
        spec = rf.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec:
            raise ConstraintError("response_format.json_schema needs a 'schema' object", "response_format.json_schema")
        strict = spec.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise ConstraintError("response_format.json_schema.strict must be a boolean",
                                  "response_format.json_schema.strict")
        # strict or not, the schema is enforced: the grammar never produces an invalid document.
        return Constraint(json_schema_grammar(spec["schema"], "response_format.json_schema.schema"), "json_schema",
                          "response_format.json_schema.schema")
    raise ConstraintError(f"response_format type {str(kind)[:40]!r} is not supported (text, json_object, json_schema)",
                          "response_format.type", "unsupported_parameter")


def _choice_grammar(choices: Any) -> str:
    if (not isinstance(choices, list) or not choices or len(choices) > MAX_CHOICES
            or not all(isinstance(c, str) and 0 < len(c) <= MAX_CHOICE_CHARS for c in choices)):
        raise ConstraintError(f"guided_choice must be 1 to {MAX_CHOICES} non-empty strings of at most "
                              f"{MAX_CHOICE_CHARS} characters", "guided_choice")
    # Lark string literals take JSON's escapes.
    return llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in choices))


def _grammar_text(text: Any) -> str:
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_GRAMMAR_CHARS:
        raise ConstraintError(f"guided_grammar must be a non-empty grammar (Lark or GBNF) of at most "
                              f"{MAX_GRAMMAR_CHARS} characters", "guided_grammar")
    try:
        return llguidance.grammar_from("grammar", text)
    except (ValueError, RecursionError) as e:
        raise ConstraintError(f"guided_grammar can't be read: {str(e)[:300]}", "guided_grammar") from None


def from_request(response_format: Any = None, guided_json: Any = None, guided_regex: Any = None,
                 guided_choice: Any = None, guided_grammar: Any = None) -> Constraint | None:
    """The request's one output constraint (None: free text). More than one is a ConstraintError."""
    given = [name for name, v in (("guided_json", guided_json), ("guided_regex", guided_regex),
                                  ("guided_choice", guided_choice), ("guided_grammar", guided_grammar)) if v is not None]
    rf = _response_format(response_format) if response_format is not None else None
    if rf is not None:
        given.insert(0, "response_format")
    if len(given) > 1:
        raise ConstraintError(f"give one output constraint, not {len(given)} ({', '.join(given)})", given[1])
    if rf is not None:
        return rf
    if guided_json is not None:
        return Constraint(json_schema_grammar(guided_json, "guided_json"), "json_schema", "guided_json")
    if guided_regex is not None:
        if not isinstance(guided_regex, str) or not guided_regex or len(guided_regex) > MAX_PATTERN_CHARS:
            raise ConstraintError(f"guided_regex must be a non-empty regular expression of at most "
                                  f"{MAX_PATTERN_CHARS} characters", "guided_regex")
        return Constraint(llguidance.LLMatcher.grammar_from_regex(guided_regex), "regex", "guided_regex")
    if guided_choice is not None:
        return Constraint(_choice_grammar(guided_choice), "choice", "guided_choice")
    if guided_grammar is not None:
        return Constraint(_grammar_text(guided_grammar), "grammar", "guided_grammar")
    return None


def compile_constraint(tokenizer, constraint: Constraint) -> llguidance.LLMatcher:
    """The matcher for a constraint (llguidance releases the GIL while it compiles); a grammar it
    refuses is a ConstraintError with llguidance's reason (e.g. `Unimplemented keys: ["not"]`)."""
    matcher = llguidance.LLMatcher(grammar_tokenizer(tokenizer), constraint.grammar, log_level=0,
                                   limits=parser_limits())
    if matcher.is_error():
        reason = " ".join(matcher.get_error().split())[:400] or "unknown error"
        what = {"json_schema": "the JSON schema", "json_object": "the JSON schema", "regex": "the regular expression",
                "choice": "the choices", "grammar": "the grammar", "tools": "a tool's parameters schema"}[constraint.kind]
        raise ConstraintError(f"{what} can't be enforced: {reason}", constraint.param)
    return matcher
