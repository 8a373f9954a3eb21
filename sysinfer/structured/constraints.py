"""A request's output constraint, from OpenAI's `response_format` or vLLM's `guided_*` fields, compiled
by llguidance into a matcher over our vocabulary.

Requests are untrusted: the inputs are bounded in size and nesting before llguidance sees them, and
the compiler and matcher run under tight parser limits (lexer states, grammar size, work per token),
so a hostile schema is refused in well under a second. Anything llguidance cannot enforce (an unknown
keyword such as `not`, an unknown string `format`, a look-around in a `pattern`) is a
ConstraintError naming it: a schema is never silently loosened.

llguidance builds its lexer lazily, at the first masks. So compiling also walks the first few tokens
(`_probe`, in the request's own thread, before the request is queued): a grammar that fails there
(`((a{100}){100}){100}`: too many expressions; a `$ref` that only refers to itself: no document can
end) is a 400 naming the field, instead of a failure inside the engine's step, and the lexer states
it built are shared with the copy the engine steps with, so its first mask no longer holds back
the step of every other stream (issue 29).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import llguidance
import numpy as np

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


PROBE_TOKENS = 4               # tokens walked at compile time (each with its mask) before the request is queued
# Lexer work allowed when the lexer is built (at the first mask). Every grammar of our tests and
# benchmarks (tool sets, 60-field schemas, formats, Unicode classes, 256 choices) builds within
# 50,000; at llguidance's default of 1,000,000, `((a{100}){100}){100}` took 4-6 s and 165 MB before
# failing on its first token, at 200,000 it is refused at its first mask in 0.6 s, +31 MB (load 12).
INITIAL_LEXER_FUEL = 200_000
TRIM_AFTER_BYTES = 32 << 20    # RSS growth of one compile past which freed memory goes back to the OS

log = logging.getLogger("sysinfer.structured")


def parser_limits() -> llguidance.LLParserLimits:
    """llguidance's limits for untrusted grammars: compile work, memory (lexer states are 1-2 kB
    each) and the work of one token's mask (its fuel runs at roughly 14k/ms)."""
    return llguidance.LLParserLimits(max_items_in_row=2000, initial_lexer_fuel=INITIAL_LEXER_FUEL,
                                     step_lexer_fuel=200_000, step_max_items=50_000, max_lexer_states=20_000,
                                     max_grammar_size=200_000, verbose_errors=False)


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


_DATA_KEYS = frozenset({"const", "enum", "default", "examples"})  # values there are data, not schemas


def rebase_refs(schema: Any, pointer: str) -> Any:
    """`schema` as a part of a bigger document, at JSON pointer `pointer` (e.g. a tool's parameters
    inside the schema of a whole call): its local references (`#`, `#/$defs/city`) made to point
    where it now lives (`#/properties/arguments/$defs/city`). Other references are kept as written.
    Depth is bounded by the caller's check (MAX_SCHEMA_DEPTH)."""
    if isinstance(schema, list):
        return [rebase_refs(v, pointer) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "$ref" and isinstance(value, str) and (value == "#" or value.startswith("#/")):
            out[key] = "#" + pointer + value[1:]
        elif key in _DATA_KEYS:
            out[key] = value
        else:
            out[key] = rebase_refs(value, pointer)
    return out


def pointer_to(*keys: str | int) -> str:
    """The JSON pointer of a path of keys (`~` and `/` escaped as RFC 6901 says)."""
    return "".join("/" + str(k).replace("~", "~0").replace("/", "~1") for k in keys)


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


_WHAT = {"json_schema": "the JSON schema", "json_object": "the JSON schema", "regex": "the regular expression",
         "choice": "the choices", "grammar": "the grammar", "tools": "a tool's parameters schema"}
# llguidance's terse reasons, said for a client
_REASONS = {"NoExtensionBias": "no output can ever complete it (e.g. a $ref that only refers to itself)",
            "too many expressions constructed": "too complex (lexer limit: too many expressions constructed)"}


def _refusal(constraint: Constraint, error: str) -> ConstraintError:
    """A ConstraintError with llguidance's reason, on one line, without the grammar llguidance was
    given (its numbered listing, "1 | start: ...", and "at 2(5):" positions in it): that is our
    internal text, not the client's."""
    reason = re.split(r"\s\d+ \| ", " " + error, maxsplit=1)[0]
    reason = re.sub(r"^at \d+\(\d+\): ", "", " ".join(reason.split()))[:400] or "unknown error"
    for key, said in _REASONS.items():
        if key in reason:
            reason = said
    return ConstraintError(f"{_WHAT[constraint.kind]} can't be enforced: {reason}", constraint.param)


def compile_constraint(tokenizer, constraint: Constraint) -> llguidance.LLMatcher:
    """The matcher for a constraint (llguidance releases the GIL while it compiles and computes
    masks), its first tokens walked (`_probe`); a grammar it refuses is a ConstraintError with
    llguidance's reason (e.g. `Unimplemented keys: ["not"]`)."""
    rss = _rss_bytes()
    try:
        matcher = _matcher(tokenizer, constraint)
    except ConstraintError as e:
        refused = e.with_traceback(None)  # its frames held the refused matcher and the probe's copy
    else:
        _trim_if_grown(rss, TRIM_AFTER_BYTES)
        return matcher
    # Out of the except block the traceback is gone and, with it, the lexer a hostile grammar built
    # (tens of MB): freed, then handed back. Trimming inside the block, before that, released nothing,
    # and after six refusals a server's RSS stayed 40-80 MB up (glibc keeps freed memory in the
    # worker thread's arena; each compile grew less than TRIM_AFTER_BYTES).
    _trim_if_grown(rss, 0)
    raise refused


def _matcher(tokenizer, constraint: Constraint) -> llguidance.LLMatcher:
    matcher = llguidance.LLMatcher(grammar_tokenizer(tokenizer), constraint.grammar, log_level=0,
                                   limits=parser_limits())
    if matcher.is_error():
        raise _refusal(constraint, matcher.get_error())
    _probe(matcher, tokenizer, constraint)
    return matcher


def _probe(matcher: llguidance.LLMatcher, tokenizer, constraint: Constraint) -> None:
    """Walks the first PROBE_TOKENS tokens on a copy of the matcher, each time taking the longest
    token allowed (the most lexer work): the lazy lexer is built here, off the engine's step, and a
    grammar that fails on its first tokens is refused now. The copy shares the lexer states it built
    with the matcher (and so with the engine's copies of it)."""
    started, walker, n_vocab = time.perf_counter(), matcher.deep_copy(), tokenizer.vocab_size
    # [ceil(n_vocab / 32)] bit j%32 of word j//32: token j allowed
    mask = np.zeros((n_vocab + 31) // 32, dtype=np.int32)
    lengths = _token_lengths(tokenizer)  # [n_vocab]
    for _ in range(PROBE_TOKENS):
        walker.unsafe_compute_mask_ptr(mask.ctypes.data, mask.nbytes)
        if walker.is_error():
            raise _refusal(constraint, walker.get_error())
        if walker.is_stopped():
            break
        allowed = np.flatnonzero(np.unpackbits(mask.view(np.uint8), bitorder="little")[:n_vocab])
        if allowed.size == 0:
            raise _refusal(constraint, "no token can start its output")
        if not walker.consume_token(int(allowed[np.argmax(lengths[allowed])])):
            raise _refusal(constraint, walker.get_error())
    seconds = time.perf_counter() - started
    if seconds > 0.5:
        log.warning("a %s took %.2f s to compile and probe", constraint.kind, seconds)


def _token_lengths(tokenizer) -> np.ndarray:
    """[vocab_size] bytes of each token (0 for special tokens: the walk prefers text to an end), built
    once per tokenizer and kept on it."""
    lengths = getattr(tokenizer, "_byte_lengths", None)
    if lengths is None:
        lengths = np.array([0 if tokenizer.is_special(i) else len(tokenizer.token_bytes(i))
                            for i in range(tokenizer.vocab_size)], dtype=np.int32)
        tokenizer._byte_lengths = lengths
    return lengths


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _trim_if_grown(before: int, limit: int) -> None:
    """A hostile grammar's lexer can take tens of MB for a moment; glibc keeps freed memory in its
    arenas (a server's RSS stayed 80 MB up after six such requests: not a leak, the same compile
    again did not grow it). Past `limit` bytes of growth, hand it back to the OS."""
    if _LIBC is not None and before and _rss_bytes() - before > limit:
        _LIBC.malloc_trim(0)


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
try:  # glibc only (malloc_trim); elsewhere memory stays with the allocator
    _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
except (OSError, AttributeError):
    _LIBC = None
