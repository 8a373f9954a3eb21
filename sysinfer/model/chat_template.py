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
from datetime import datetime
from typing import TYPE_CHECKING

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


__all__ = ["ChatTemplateError", "chat_token_ids", "render_chat", "template_source"]


def _raise_exception(message: str):
    raise ChatTemplateError(str(message))


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def template_globals() -> dict:
    """The functions a template may call besides jinja2's own (as Hugging Face's renderer offers)."""
    return {"raise_exception": _raise_exception, "strftime_now": _strftime_now}


def template_source(tok: "Tokenizer") -> str:
    if tok.chat_template:
        return tok.chat_template
    if tok.architecture in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[tok.architecture]
    raise ChatTemplateError(f"the model has no chat template and there is no built-in one for {tok.architecture!r}")


_TOOL_KEYS = ("tool_calls", "tool_call_id", "name")  # kept for templates that render tool turns


def normalize_messages(messages: list[dict]) -> list[dict]:
    """Plain {role, content} dicts of strings (content parts of type text are joined), with an
    assistant turn's `tool_calls` and a tool turn's `tool_call_id` / `name` kept when present."""
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
        out.append({"role": m["role"], "content": content, **{k: m[k] for k in _TOOL_KEYS if m.get(k) is not None}})
    return out


def _render(tok: "Tokenizer", messages: list[dict], add_generation_prompt: bool, tools: list | None = None) -> str:
    """A file's template renders in a worker process under time and memory limits (template_worker);
    our own built-in ones are trusted and render here."""
    context = {"messages": messages, "add_generation_prompt": add_generation_prompt, "tools": tools,
               "bos_token": tok.tokens[tok.bos_id] if tok.bos_id is not None else "",
               "eos_token": tok.tokens[tok.eos_id] if tok.eos_id is not None else ""}
    source = template_source(tok)
    return render_here(source, context) if source in BUILTIN_TEMPLATES.values() else render_isolated(source, context)


def render_chat(tok: "Tokenizer", messages: list[dict], add_generation_prompt: bool = True,
                tools: list | None = None) -> str:
    return _render(tok, normalize_messages(messages), add_generation_prompt, tools)


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


def _pick_marker(messages: list[dict], tools: list | None = None) -> str:
    """A private-use character found nowhere in the input, neither as itself nor as the JSON escape
    (`\\ue000`) that a template's `tojson` writes for it."""
    used = json.dumps([messages, tools], ensure_ascii=False).lower()
    for code in range(0xE000, 0xF8FF):
        if chr(code) not in used and _escaped(chr(code)) not in used:
            return chr(code)
    raise ChatTemplateError("messages use every private-use character")  # not reachable in practice


def _escaped(marker: str) -> str:
    return "\\u%04x" % ord(marker)


def chat_token_ids(tok: "Tokenizer", messages: list[dict], add_generation_prompt: bool = True,
                   tools: list | None = None) -> list[int]:
    """`tools` (OpenAI function definitions) go to the template, for templates that render them."""
    messages = normalize_messages(messages)
    specials = sorted(tok.special_tokens, key=len, reverse=True)
    marker = _pick_marker(messages, tools)
    if specials:
        pattern = re.compile("|".join(re.escape(s) for s in specials))
        broken = lambda text: pattern.sub(lambda m: m.group(0)[0] + marker + m.group(0)[1:], text)  # noqa: E731
        # every string the client wrote: contents, tool calls' arguments, tool definitions
        messages = [{k: (v if k == "role" else _map_strings(v, broken)) for k, v in m.items()} for m in messages]
        tools = _map_strings(tools, broken) if tools else tools
    rendered = _render(tok, messages, add_generation_prompt, tools)
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
