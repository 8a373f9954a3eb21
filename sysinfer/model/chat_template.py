"""Chat templates: the GGUF's `tokenizer.chat_template` rendered in a sandboxed jinja2 environment,
or a built-in format chosen by architecture when a file has none (older Baichuan 2 files).

Turning a chat into ids: special tokens the template writes (`<|start_header_id|>`, `<|im_start|>`,
`<reserved_106>`) become their single ids; the same text inside a message does not. Before rendering,
every special-token string inside message text is broken with a private-use marker character that
occurs nowhere in the messages; after rendering, the text is split at the (intact) specials the
template wrote, the markers are removed, and the rest is encoded with specials disabled.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .template_worker import ChatTemplateError, render_here, render_isolated

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Baichuan 2: the system text first, then <reserved_106> user / <reserved_107> assistant turns
# (ids 195 / 196), ending with <reserved_107> for the answer to come.
BAICHUAN2_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}{{ '<reserved_106>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '<reserved_107>' + message['content'] }}"
    "{% else %}{{ raise_exception('unknown role: ' + message['role']) }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<reserved_107>' }}{% endif %}"
)
BUILTIN_TEMPLATES = {"baichuan": BAICHUAN2_TEMPLATE, "llama": LLAMA3_TEMPLATE}


__all__ = ["ChatTemplateError", "chat_token_ids", "check_variables", "render_chat", "template_source"]


def template_source(tok: "Tokenizer") -> str:
    if tok.chat_template:
        return tok.chat_template
    if tok.architecture in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[tok.architecture]
    raise ChatTemplateError(f"the model has no chat template and there is no built-in one for {tok.architecture!r}")


# Kept when present: tool turns for templates that render them, and an assistant turn's reasoning
# (Qwen3's template writes `reasoning_content` of the turns after the last user query).
_KEPT_KEYS = ("tool_calls", "tool_call_id", "name")
# An assistant turn's reasoning, under the names clients use; a template sees it as both
# `reasoning_content` (Qwen3, DeepSeek) and `thinking` (gpt-oss), as Hugging Face's renderer shows it.
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")
# What _render itself passes; extra template variables may not replace them.
RESERVED_VARIABLES = frozenset({"messages", "tools", "add_generation_prompt", "bos_token", "eos_token"})


def normalize_messages(messages: list[dict]) -> list[dict]:
    """Plain {role, content} dicts of strings (content parts of type text are joined), with an
    assistant turn's `tool_calls` / `reasoning_content` and a tool turn's `tool_call_id` / `name`
    kept when present."""
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ChatTemplateError(f"messages[{i}] needs a string 'role'")
        content = m.get("content", "")
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ChatTemplateError(f"messages[{i}].content: only text parts are supported")
                texts.append(part["text"])
            content = "".join(texts)
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise ChatTemplateError(f"messages[{i}].content must be a string or a list of text parts")
        message = {"role": m["role"], "content": content, **{k: m[k] for k in _KEPT_KEYS if m.get(k) is not None}}
        reasoning = next((m[k] for k in _REASONING_KEYS if m.get(k) is not None), None)
        if reasoning is not None:
            if not isinstance(reasoning, str):
                raise ChatTemplateError(f"messages[{i}].reasoning_content must be a string")
            message.update(reasoning_content=reasoning, thinking=reasoning)
        out.append(message)
    return out


def check_variables(variables: Mapping[str, Any] | None) -> dict[str, Any]:
    """Extra template variables (e.g. `enable_thinking` for Qwen3's template) as a plain dict; a
    name that isn't a string or replaces one of RESERVED_VARIABLES is refused."""
    if variables is None:
        return {}
    if not isinstance(variables, Mapping):
        raise ChatTemplateError(f"template variables must be a mapping, got {type(variables).__name__}")
    for name in variables:
        if not isinstance(name, str) or not name.isidentifier():
            raise ChatTemplateError(f"template variable name {name!r} is not an identifier")
        if name in RESERVED_VARIABLES:
            raise ChatTemplateError(f"template variable {name!r} is set by the server, not by a request")
    return dict(variables)


def _render(tok: "Tokenizer", messages: list[dict], add_generation_prompt: bool, tools: list | None = None,
            variables: dict[str, Any] | None = None) -> str:
    """A file's template renders in a worker process under time and memory limits (template_worker);
    our own built-in ones are trusted and render here."""
    # `documents` (RAG templates) is None unless a request's template variables give it, as in transformers
    context = {"documents": None, **(variables or {}), "messages": messages,
               "add_generation_prompt": add_generation_prompt, "tools": tools,
               "bos_token": tok.tokens[tok.bos_id] if tok.bos_id is not None else "",
               "eos_token": tok.tokens[tok.eos_id] if tok.eos_id is not None else ""}
    source = template_source(tok)
    return render_here(source, context) if source in BUILTIN_TEMPLATES.values() else render_isolated(source, context)


def render_chat(tok: "Tokenizer", messages: list[dict], add_generation_prompt: bool = True,
                tools: list | None = None, *, variables: Mapping[str, Any] | None = None) -> str:
    """The rendered prompt text. `variables`: extra template variables (check_variables)."""
    return _render(tok, normalize_messages(messages), add_generation_prompt, tools, check_variables(variables))


def renders_tools(tok: "Tokenizer") -> bool:
    """Whether the model's template writes the `tools` it is given (Llama 3.1 does; SmolLM2 and
    Baichuan 2 don't): a probe function's name must appear in the rendered prompt. Asked once."""
    known = getattr(tok, "_renders_tools", None)
    if known is None:
        probe = "sysinfer_probe_function"
        tools = [{"type": "function", "function": {"name": probe, "description": "probe",
                                                   "parameters": {"type": "object", "properties": {}}}}]
        try:
            known = probe in render_chat(tok, [{"role": "user", "content": "hi"}], True, tools)
        except ChatTemplateError:
            known = False
        tok._renders_tools = known
    return known


def _map_strings(value, fn):
    """value with fn applied to every string inside it (dicts, lists), keys included."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {_map_strings(k, fn): _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    return value


def _pick_marker(messages: list[dict], tools: list | None = None, variables: dict | None = None) -> str:
    """A private-use character found nowhere in the input, neither as itself nor as the JSON escape
    (`\\ue000`) that a template's `tojson` writes for it."""
    used = json.dumps([messages, tools, variables], ensure_ascii=False, default=str).lower()
    for code in range(0xE000, 0xF8FF):
        if chr(code) not in used and _escaped(chr(code)) not in used:
            return chr(code)
    raise ChatTemplateError("messages use every private-use character")  # not reachable in practice


def _escaped(marker: str) -> str:
    return "\\u%04x" % ord(marker)


_REPLY_TEXT_KEYS = ("content", *_REASONING_KEYS)


def _breaker(specials: list[str], marker: str):
    """text -> text with marker inserted after the first character of every special-token string."""
    pattern = re.compile("|".join(re.escape(s) for s in specials))
    return lambda text: pattern.sub(lambda m: m.group(0)[0] + marker + m.group(0)[1:], text)


def chat_token_ids(tok: "Tokenizer", messages: list[dict], add_generation_prompt: bool = True,
                   tools: list | None = None, *, variables: Mapping[str, Any] | None = None) -> list[int]:
    """`tools` (OpenAI function definitions) go to the template, for templates that render them;
    `variables` are extra template variables such as `enable_thinking` (check_variables). Strings
    anywhere in them are the client's, so special-token text inside is broken like message text."""
    messages = normalize_messages(messages)
    variables = check_variables(variables)
    specials = sorted(tok.special_tokens, key=len, reverse=True)
    marker = _pick_marker(messages, tools, variables)
    if specials:
        broken = _breaker(specials, marker)
        # An assistant turn's own markup (`<think>`, `</think>`, `<tool_call>`: user-defined tokens) stays
        # whole, as the model wrote it: templates cut earlier turns' reasoning at `</think>` (Qwen3,
        # DeepSeek-R1). The control tokens that frame turns are broken there too.
        control = [t for t in specials if tok.is_control(tok.special_tokens[t])]
        broken_in_reply = _breaker(control, marker) if control else (lambda text: text)

        def fix(m: dict) -> dict:  # every string the client wrote: contents, tool calls' arguments
            reply = m["role"] == "assistant"
            return {k: v if k == "role" else _map_strings(v, broken_in_reply if reply and k in _REPLY_TEXT_KEYS else broken)
                    for k, v in m.items()}

        messages = [fix(m) for m in messages]
        tools = _map_strings(tools, broken) if tools else tools
        variables = {k: _map_strings(v, broken) for k, v in variables.items()}
    rendered = _render(tok, messages, add_generation_prompt, tools, variables)
    ids: list[int] = []
    first = True
    parts = re.split("(" + "|".join(re.escape(s) for s in specials) + ")", rendered) if specials else [rendered]
    for i, part in enumerate(parts):
        if i % 2 == 1:
            ids.append(tok.special_tokens[part])
        elif part:
            ids.extend(tok._encode_plain(part.replace(marker, "").replace(_escaped(marker), ""), first))
        first = False
    return ids
