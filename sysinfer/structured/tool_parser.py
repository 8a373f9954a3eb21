"""Tool calling: the request's functions, the prompt that describes them, the grammar that holds the
model to the call syntax and to each function's parameters schema, and the parser that turns the
output back into OpenAI `tool_calls` (whole, or as streamed deltas).

Two call syntaxes (ToolSyntax):
- `hermes`, our generic format, for templates that don't render tools (SmolLM2, Baichuan 2) and for
  templates whose own format it is (Qwen 2.5, Hermes): a system-prompt section lists the functions
  and the model writes each call as
      <tool_call>
      {"name": "get_weather", "arguments": {"city": "Paris"}}
      </tool_call>
- `llama3_json`, when the GGUF's template renders `tools` itself (Llama 3.1 / 3.2): the template
  describes the functions and the model answers with `{"name": ..., "parameters": {...}}`.

tool_choice: `required` and a named function are constrained from the first token (a call, only the
named function); `auto` lets the model write text until it starts a call (`<tool_call>`, or `{` as
the first character for llama3_json), then constrains the rest; `none` leaves tools out of the prompt.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, replace
from typing import Any

import llguidance

from .constraints import (JSON_OPTIONS, MAX_SCHEMA_CHARS, MAX_SCHEMA_DEPTH, Constraint, ConstraintError, _depth,
                          pointer_to, rebase_refs)

MAX_TOOLS = 128
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
PROBE_NAME = "sysinfer_probe_function"  # a template that writes this name renders `tools`


@dataclass(frozen=True)
class Function:
    name: str
    description: str
    parameters: dict[str, Any]

    def as_tool(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


@dataclass(frozen=True)
class ToolPlan:
    """What the request allows: its functions, the mode ("auto", "required", "named"), parallel calls
    (None: the request did not say, and the model's call syntax decides: ToolSyntax.parallel_calls)."""
    functions: tuple[Function, ...]
    mode: str
    named: str | None = None
    parallel: bool | None = None

    @property
    def allowed(self) -> tuple[Function, ...]:
        return tuple(f for f in self.functions if self.named is None or f.name == self.named)


def _function(i: int, tool: Any) -> Function:
    where = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(tool.get("function"), dict):
        raise ConstraintError(f"{where} must be {{\"type\": \"function\", \"function\": {{...}}}}", where)
    fn = tool["function"]
    name = fn.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConstraintError(f"{where}.function.name must be 1-64 letters, digits, '_' or '-'", f"{where}.function.name")
    description = fn.get("description") or ""
    if not isinstance(description, str):
        raise ConstraintError(f"{where}.function.description must be a string", f"{where}.function.description")
    params = fn.get("parameters")
    if params is None:  # OpenAI: no parameters = a function that takes none
        params = {"type": "object", "properties": {}, "additionalProperties": False}
    if not isinstance(params, dict):
        raise ConstraintError(f"{where}.function.parameters must be a JSON schema object", f"{where}.function.parameters")
    if _depth(params, MAX_SCHEMA_DEPTH) > MAX_SCHEMA_DEPTH or len(json.dumps(params)) > MAX_SCHEMA_CHARS:
        raise ConstraintError(f"{where}.function.parameters is too large or too deeply nested",
                              f"{where}.function.parameters", "schema_too_large")
    return Function(name, description, params)


def plan_from_request(tools: Any, tool_choice: Any, parallel_tool_calls: Any) -> ToolPlan | None:
    """The request's tool plan; None when there are no tools or tool_choice is "none"."""
    if tool_choice is not None and tools is None:
        raise ConstraintError("tool_choice needs tools", "tool_choice")
    if tools is None:
        return None
    if not isinstance(tools, list) or not tools or len(tools) > MAX_TOOLS:
        raise ConstraintError(f"tools must be a list of 1 to {MAX_TOOLS} functions", "tools")
    functions = tuple(_function(i, t) for i, t in enumerate(tools))
    names = [f.name for f in functions]
    if len(set(names)) != len(names):
        raise ConstraintError("tools name the same function twice", "tools")
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise ConstraintError("parallel_tool_calls must be a boolean", "parallel_tool_calls")
    parallel = parallel_tool_calls  # None: as the template's call syntax allows (tool_grammar)
    choice = "auto" if tool_choice is None else tool_choice
    if choice == "none":
        return None
    if choice in ("auto", "required"):
        return ToolPlan(functions, choice, None, parallel)
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in names:
            raise ConstraintError(f"tool_choice names {str(name)[:64]!r}, which is not in tools", "tool_choice")
        return ToolPlan(functions, "named", name, False)
    raise ConstraintError('tool_choice must be "none", "auto", "required" or {"type": "function", "function": '
                          '{"name": ...}}', "tool_choice")


# ---- the two syntaxes ----

@dataclass(frozen=True)
class ToolSyntax:
    name: str
    args_key: str      # "arguments" or "parameters"
    opener: str        # what starts a call ("" for llama3_json, where a call is a bare JSON object)
    closer: str        # what ends a call
    separator: str     # between parallel calls
    template_renders_tools: bool
    # Parallel calls when the request leaves parallel_tool_calls unset: only where the template
    # writes several calls of one turn back (it was trained on them: Qwen 2.5, Hermes), as llama.cpp
    # decides. The generic format (a model never trained on calls, SmolLM2) and Llama 3.1 (whose
    # template refuses two calls in a turn) make one call: left free to make more, a small model
    # repeats its call until max_tokens (SmolLM2 wrote 112 get_weather calls for the README's example).
    parallel_calls: bool = False


HERMES = ToolSyntax("hermes", "arguments", "<tool_call>\n", "\n</tool_call>", "\n", False)
HERMES_TEMPLATE = ToolSyntax("hermes", "arguments", "<tool_call>\n", "\n</tool_call>", "\n", True)
LLAMA3_JSON = ToolSyntax("llama3_json", "parameters", "", "", "\n", True)


def choose_syntax(tokenizer) -> ToolSyntax:
    """The model's call syntax: a template that renders `tools` and speaks of <tool_call> (Qwen 2.5,
    Hermes) keeps its own tool section and our <tool_call> calls; one that renders tools otherwise
    (Llama 3.1 / 3.2) gets Llama 3.1 JSON calls; any other the generic format."""
    from ..model.chat_template import ChatTemplateError, renders_tools, template_source

    try:
        if not renders_tools(tokenizer):
            return HERMES
        syntax = HERMES_TEMPLATE if "<tool_call>" in template_source(tokenizer) else LLAMA3_JSON
    except ChatTemplateError:
        return HERMES
    return replace(syntax, parallel_calls=renders_parallel_calls(tokenizer))


def renders_parallel_calls(tokenizer) -> bool:
    """Whether the model's template writes both calls of an assistant turn that made two (the
    second one's name must appear in the rendered prompt). Asked once per tokenizer."""
    from ..model.chat_template import ChatTemplateError, render_chat

    known = getattr(tokenizer, "_renders_parallel_calls", None)
    if known is None:
        tool = {"type": "function", "function": {"name": PROBE_NAME, "description": "probe",
                                                 "parameters": {"type": "object", "properties": {}}}}
        calls = [{"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": {}}}
                 for i, name in enumerate((PROBE_NAME, PROBE_NAME + "_second"))]
        messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": calls},
                    {"role": "tool", "tool_call_id": "call_0", "content": "ok"},
                    {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]
        try:
            known = PROBE_NAME + "_second" in render_chat(tokenizer, messages, True, [tool])
        except ChatTemplateError:
            known = False
        tokenizer._renders_parallel_calls = known
    return known


_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_ONES = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames")


def closed_objects(schema: Any) -> Any:
    """`schema` with `additionalProperties: false` on every object that lists its `properties` and
    says nothing about other keys. A function takes the arguments it names: without this a small
    model, free to add keys (JSON Schema's default), tends to invent argument after argument until
    max_tokens, and the call never parses (seen with LangChain's schemas, which leave it out).
    A schema that allows other keys on purpose says so and is kept as it is. Depth is bounded by
    the caller's check (MAX_SCHEMA_DEPTH)."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: closed_objects(sub) for name, sub in out[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [closed_objects(sub) for sub in out[key]]
    for key in _SCHEMA_ONES:
        if key in out:
            out[key] = [closed_objects(s) for s in out[key]] if isinstance(out[key], list) else closed_objects(out[key])
    is_object = out.get("type", "object") == "object" or (isinstance(out.get("type"), list) and "object" in out["type"])
    if (is_object and isinstance(out.get("properties"), dict) and "additionalProperties" not in out
            and "patternProperties" not in out and "unevaluatedProperties" not in out):
        out["additionalProperties"] = False
    return out


def call_schema(syntax: ToolSyntax, functions: tuple[Function, ...]) -> dict[str, Any]:
    """JSON schema of one call: the function's name, then its arguments under its parameters schema
    (objects closed to keys they don't name: closed_objects)."""
    # Each function's own references ($defs, as pydantic and LangChain write them) resolve in its parameters.
    at = [("properties",) if len(functions) == 1 else ("anyOf", i, "properties") for i in range(len(functions))]
    calls = [{"type": "object", "properties": {"name": {"const": f.name}, syntax.args_key: rebase_refs(
              closed_objects(f.parameters), pointer_to(*at[i], syntax.args_key))},
              "required": ["name", syntax.args_key], "additionalProperties": False} for i, f in enumerate(functions)]
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    return {"x-guidance": dict(JSON_OPTIONS), **schema}


def _lit(text: str) -> str:
    return json.dumps(text)  # a Lark string literal (JSON escapes)


def tool_grammar(syntax: ToolSyntax, plan: ToolPlan) -> Constraint:
    """The Lark grammar of the reply under `plan` in `syntax`."""
    schema = json.dumps(call_schema(syntax, plan.allowed))
    call = f"{_lit(syntax.opener)} fn {_lit(syntax.closer)}" if syntax.opener else f"fn {_lit(syntax.closer)}" \
        if syntax.closer else "fn"
    # After a call the model may end right away, or after the separator (a newline, which a model
    # tends to write after a line anyway): it is then not pushed into starting another call.
    sep = _lit(syntax.separator)
    parallel = syntax.parallel_calls if plan.parallel is None else plan.parallel
    more = f"({sep} call)* {sep}?" if parallel else f"{sep}?"
    lines = [f"call: {call}", f"fn: %json {schema}"]
    if plan.mode == "auto":
        if syntax.opener:  # free text without the opener, or text up to the first opener, then calls
            trigger = syntax.opener.strip()
            lines += [f"start: TEXT | head rest",
                      f"TEXT: /(?s:.*)/ & ~/(?s:.*){re.escape(trigger)}(?s:.*)/",
                      f"head[lazy]: /(?s:.*){re.escape(trigger)}/",
                      f"rest: {_lit(syntax.opener[len(trigger):])} fn {_lit(syntax.closer)} {more}"]
        else:  # llama3_json: a reply that starts with "{" is a call, any other is text
            lines += [f"start: TEXT | call {more}", "TEXT: /(?s:[^{].*)?/"]
    else:
        lines.append(f"start: call {more}")
    grammar = llguidance.LLMatcher.grammar_from_lark("\n".join(lines))
    return Constraint(grammar, "tools", "tools")


def system_section(plan: ToolPlan) -> str:
    """The generic format's description of the functions, for the system prompt."""
    tools = "\n".join(json.dumps(f.as_tool(), ensure_ascii=False) for f in plan.allowed)
    rule = {"auto": "If a function would help answer, call it; otherwise answer normally.",
            "required": "You must call at least one function.",
            "named": f"You must call the function {plan.named}."}[plan.mode]
    return ("# Tools\n\nYou may call functions to help with the user's request. They are described by these "
            f"JSON schemas:\n<tools>\n{tools}\n</tools>\n\n{rule} To call a function, write one JSON object with "
            "its name and arguments between <tool_call></tool_call> tags:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <arguments-json-object>}\n</tool_call>\n'
            "A function's result comes back in the next turn between <tool_response></tool_response> tags.")


# ---- the conversation ----

def _hermes_history(messages: list[dict]) -> list[dict]:
    """Earlier calls and results as the generic format writes them (plain roles, plain text)."""
    out = []
    for m in messages:
        if m.get("role") == "assistant" and m.get("tool_calls"):
            calls = "\n".join("<tool_call>\n" + json.dumps({"name": c["function"]["name"],
                                                            "arguments": c["function"]["arguments"]},
                                                           ensure_ascii=False) + "\n</tool_call>"
                              for c in m["tool_calls"])  # arguments: as_template_message made them objects
            text = m.get("content") or ""
            out.append({"role": "assistant", "content": (text + "\n" if text else "") + calls})
        elif m.get("role") == "tool":
            body = m.get("content") or ""
            if isinstance(body, list):
                body = "".join(p.get("text") or "" for p in body if isinstance(p, dict))
            out.append({"role": "user", "content": f"<tool_response>\n{body}\n</tool_response>"})
        else:
            out.append({k: v for k, v in m.items() if k in ("role", "content")})
    return out


def prepare_messages(syntax: ToolSyntax, messages: list[dict], plan: ToolPlan | None
                     ) -> tuple[list[dict], list[dict] | None]:
    """(messages for the chat template, `tools` for the template or None)."""
    if syntax.template_renders_tools:
        return messages, [f.as_tool() for f in plan.allowed] if plan else None
    messages = _hermes_history(messages)
    if plan is not None:
        section = system_section(plan)
        if messages and messages[0]["role"] in ("system", "developer") and isinstance(messages[0].get("content"), str):
            messages[0] = {"role": "system", "content": messages[0]["content"].rstrip() + "\n\n" + section}
        else:
            messages.insert(0, {"role": "system", "content": section})
    return messages, None


# ---- the output ----

def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def _string_end(text: str, start: int) -> int | None:
    """Index past the closing quote of the JSON string starting at text[start] (None: not closed yet)."""
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i + 1
        i += 1
    return None


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _value_end(text: str, start: int) -> int | None:
    """Index past the JSON value starting at text[start] (None: not complete yet). The one scanner
    of the call parser: strings by their quotes and escapes, objects and arrays by their brackets,
    anything else up to the next delimiter."""
    if text[start] == '"':
        return _string_end(text, start)
    if text[start] not in "{[":
        m = re.compile(r"[^,}\]\s]*").match(text, start)
        return m.end() if m.end() < len(text) else None
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c == '"':
            end = _string_end(text, i)
            if end is None:
                return None
            i = end
            continue
        if c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _members(text: str) -> dict[str, tuple[int, int]] | None:
    """The top-level members of the complete JSON object `text`: key -> (start, end) of its value's
    text (None when it is not an object written as JSON allows)."""
    i = _skip_space(text, 1)
    out: dict[str, tuple[int, int]] = {}
    while i < len(text) and text[i] != "}":
        if text[i] != '"':
            return None
        key_end = _string_end(text, i)
        colon = _skip_space(text, key_end) if key_end is not None else len(text)
        if colon >= len(text) or text[colon] != ":":
            return None
        value = _skip_space(text, colon + 1)
        value_end = _value_end(text, value) if value < len(text) else None
        if value_end is None:
            return None
        out[json.loads(text[i:key_end])] = (value, value_end)
        i = _skip_space(text, value_end)
        if i < len(text) and text[i] == ",":
            i = _skip_space(text, i + 1)
    return out


def compact_json(text: str) -> str:
    """JSON text on one line, as json.dumps writes it (", " and ": ", no other whitespace outside
    strings); strings and numbers stay exactly as written. The grammar lets a model break lines and
    indent (JSON_OPTIONS), and SmolLM2 does; a client shows the arguments as OpenAI's are, compact."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == '"':
            end = _string_end(text, i) or len(text)
            out.append(text[i:end])
            i = end
            continue
        if c not in " \t\r\n":
            out.append(c + " " if c in ",:" else c)
        i += 1
    return "".join(out)


def complete_call(text: str, args_key: str) -> tuple[str, str] | None:
    """(name, arguments text as written, made compact: compact_json) of one call's complete JSON
    object, or None when it is not a whole call: a name string and arguments that parse as a JSON object."""
    try:
        members = _members(text)
        if members is None or "name" not in members or args_key not in members:
            return None
        name = json.loads(text[slice(*members["name"])])
        args_text = text[slice(*members[args_key])]
        args = json.loads(args_text)
    except ValueError:
        return None
    if not isinstance(name, str) or not isinstance(args, dict):
        return None
    return name, compact_json(args_text)


@dataclass
class ToolCallDelta:
    index: int
    id: str | None = None         # on the call's first delta, with the name
    name: str | None = None
    arguments: str = ""           # the arguments' JSON text (a whole call goes out in one delta)


class ToolCallParser:
    """Text of the reply in, content and tool calls out, as they become certain: the same parser
    serves streamed replies (feed per delta) and whole ones (one feed), so both give the same calls,
    with the arguments as the model wrote them, on one line (compact_json).

    A call goes out once its JSON object is complete and its arguments parse as a JSON object, in
    one delta (index, id, name, arguments): a call cut off by max_tokens is never sent, streamed or
    not, so no client ever holds arguments that don't parse as if they were a call."""

    def __init__(self, syntax: ToolSyntax, plan: ToolPlan):
        self.syntax = syntax
        self.auto = plan.mode == "auto"
        self.trigger = syntax.opener.strip() if syntax.opener else "{"
        self.text = ""          # everything so far
        self.content_sent = 0   # text[:content_sent] went out as content
        self.calls_from: int | None = None if self.auto else 0  # where the calls start in text
        self.calls: list[tuple[str, str]] = []  # (name, arguments) of each call sent
        self.resolved = 0       # call segments whose JSON is complete (sent as calls, or not a call)
        self.repeated = False   # a complete call equal to one already sent: the reply should end here

    @property
    def called(self) -> bool:
        return bool(self.calls)

    def feed(self, text: str, final: bool = False) -> tuple[str, list[ToolCallDelta]]:
        self.text += text
        content = self._content(final)
        return content, self._call_deltas() if self.calls_from is not None else []

    def _content(self, final: bool) -> str:
        if self.calls_from is not None:
            return ""
        if self.syntax.opener:
            at = self.text.find(self.trigger)
            if at >= 0:
                self.calls_from = at
                out, self.content_sent = self.text[self.content_sent:at], at
                return out
            # hold back a tail that could still become the trigger
            keep = 0 if final else next((k for k in range(min(len(self.trigger) - 1, len(self.text)), 0, -1)
                                         if self.trigger.startswith(self.text[-k:])), 0)
            end = len(self.text) - keep
        else:  # llama3_json: a call only if the reply starts with "{"
            if not self.text and not final:
                return ""
            if self.text.startswith("{"):
                self.calls_from = 0
                return ""
            end = len(self.text)
        out, self.content_sent = self.text[self.content_sent:end], end
        return out

    def _objects(self) -> list[str | None]:
        """Each call's JSON object in the calls part, in order: its text once complete, None for the
        last one while it is still being written."""
        part = self.text[self.calls_from:]
        out: list[str | None] = []
        pos = part.find(self.trigger) + len(self.trigger) if self.syntax.opener else 0
        while pos <= len(part):
            brace = part.find("{", pos)
            if brace < 0:
                break
            end = _value_end(part, brace)
            out.append(part[brace:end] if end is not None else None)
            if end is None:
                break
            pos = end
            if self.syntax.opener:
                nxt = part.find(self.trigger, pos)
                if nxt < 0:
                    break
                pos = nxt + len(self.trigger)
        return out

    def _call_deltas(self) -> list[ToolCallDelta]:
        deltas = []
        for obj in self._objects()[self.resolved:]:
            if obj is None:
                break
            self.resolved += 1
            call = complete_call(obj, self.syntax.args_key)
            if call is not None and call in self.calls:
                # The same call again: a small model allowed several calls repeats its call until
                # max_tokens. Never sent twice; the caller ends the reply (`repeated`).
                self.repeated = True
            elif call is not None:
                deltas.append(ToolCallDelta(len(self.calls), new_call_id(), call[0], call[1]))
                self.calls.append(call)
        return deltas


def whole_calls(parser: ToolCallParser, text: str) -> tuple[str, list[dict[str, Any]]]:
    """A non-streamed reply: (content, OpenAI tool_calls) from its whole text."""
    content, deltas = parser.feed(text, final=True)
    return content, [{"id": d.id, "type": "function", "function": {"name": d.name, "arguments": d.arguments}}
                     for d in deltas]
