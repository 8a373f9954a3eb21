"""Tool calling: the request's functions, the prompt that describes them, the grammar that holds the
model to the call syntax and to each function's parameters schema.

Two call syntaxes (ToolSyntax):
- `hermes`, our generic format, for templates that don't render tools (SmolLM2, Baichuan 2) and for
  templates whose own format it is (Qwen 2.5, Hermes): a system-prompt section lists the functions
  and the model writes each call as
      <tool_call>
      {"name": "get_weather", "arguments": {"city": "Paris"}}
      </tool_call>
- `llama3_json`, when the GGUF's template renders `tools` itself (Llama 3.1 / 3.2): the template
  describes the functions and the model answers with `{"name": ..., "parameters": {...}}`.

The output's parser is tool_parser.py.

tool_choice: `required` and a named function are constrained from the first token (a call, only the
named function); `auto` lets the model write text until it starts a call (`<tool_call>`, or `{` as
the first character for llama3_json), then constrains the rest; `none` leaves tools out of the prompt.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any

import llguidance

from .constraints import (JSON_OPTIONS, MAX_SCHEMA_CHARS, MAX_SCHEMA_DEPTH, Constraint, ConstraintError, _depth,
                          pointer_to, rebase_refs)

MAX_TOOLS = 128
# Calls in one reply, at most: the grammar ends the reply after this many (a model that keeps
# inventing new calls, not only repeating one, which call_loop.py ends at once).
MAX_PARALLEL_CALLS = 16
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
    if tools == [] and tool_choice in (None, "auto", "none"):
        # An agent with no functions configured sends `tools: []` (Ollama's and vLLM's servers take it
        # as no tools, and so do we): a plain reply. A call can't be required of no functions.
        return None
    if tools == []:
        raise ConstraintError("tool_choice asks for a call, but tools is empty: give at least one function",
                              "tool_choice")
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
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
    # A model that thinks (`<think>` ... `</think>`, model/thinking_tags.py), in a syntax whose calls open
    # with a tag: the tags. A call written in a section that opens the reply is a thought, not a call
    # (the grammar leaves the section free, the parser finds no call in it). None: no section.
    think: tuple[str, str] | None = None


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
            return _with_thinking(HERMES, tokenizer)
        syntax = HERMES_TEMPLATE if "<tool_call>" in template_source(tokenizer) else LLAMA3_JSON
    except ChatTemplateError:
        return _with_thinking(HERMES, tokenizer)
    return _with_thinking(replace(syntax, parallel_calls=renders_parallel_calls(tokenizer)), tokenizer)


def _with_thinking(syntax: ToolSyntax, tokenizer) -> ToolSyntax:
    """`syntax` with the thinking tags of a model that thinks (calls that open with a tag only: a
    Llama 3.1 JSON call is the reply's first character, so a reply that opens a section makes none)."""
    from ..model.thinking_tags import markers_for

    markers = markers_for(tokenizer) if syntax.opener else None
    return replace(syntax, think=(markers.start, markers.end)) if markers else syntax


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


def _rx(text: str) -> str:
    return re.escape(text).replace("/", "\\/")  # text inside a Lark /regex/


def tool_grammar(syntax: ToolSyntax, plan: ToolPlan) -> Constraint:
    """The Lark grammar of the reply under `plan` in `syntax`."""
    schema = json.dumps(call_schema(syntax, plan.allowed))
    call = f"{_lit(syntax.opener)} fn {_lit(syntax.closer)}" if syntax.opener else f"fn {_lit(syntax.closer)}" \
        if syntax.closer else "fn"
    # After a call the model may end right away, or after the separator (a newline, which a model
    # tends to write after a line anyway): it is then not pushed into starting another call.
    sep = _lit(syntax.separator)
    parallel = syntax.parallel_calls if plan.parallel is None else plan.parallel
    more = f"({sep} call){{0,{MAX_PARALLEL_CALLS - 1}}} {sep}?" if parallel else f"{sep}?"
    lines = [f"call: {call}", f"fn: %json {schema}"]
    if syntax.think:  # the reply may open with a thinking section, free (a call in it is a thought)
        start, end = (_rx(tag) for tag in syntax.think)
        lines += ["start: think? answer", f"think[lazy]: /{start}(?s:.*){end}/"]
    else:
        lines.append("start: answer")
    if plan.mode == "auto":
        if syntax.opener:  # free text without the opener, or text up to the first opener, then calls
            trigger = syntax.opener.strip()
            # the first opener of a reply that opens a section is the section's (think, above)
            not_thinking = f" & ~/{_rx(syntax.think[0])}(?s:.*)/" if syntax.think else ""
            lines += [f"answer: TEXT | head rest",
                      f"TEXT: /(?s:.*)/ & ~/(?s:.*){_rx(trigger)}(?s:.*)/",
                      f"head[lazy]: /(?s:.*){_rx(trigger)}/{not_thinking}",
                      f"rest: {_lit(syntax.opener[len(trigger):])} fn {_lit(syntax.closer)} {more}"]
        else:  # llama3_json: a reply that starts with "{" is a call, any other is text
            lines += [f"answer: TEXT | call {more}", "TEXT: /(?s:[^{].*)?/"]
    else:
        lines.append(f"answer: call {more}")
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
