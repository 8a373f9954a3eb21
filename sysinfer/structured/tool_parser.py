"""The tool-call parser: a reply's text in, content and OpenAI `tool_calls` out (whole, or as streamed
deltas), in the call syntax tools.py chose. One JSON scanner (`_value_end`) finds each call's object."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from .tools import ToolPlan, ToolSyntax


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


def call_key(call: tuple[str, str]) -> tuple[str, str]:
    """What makes two calls the same call: the name and the arguments' value (key order and
    whitespace aside). complete_call's arguments always parse."""
    name, args = call
    return name, json.dumps(json.loads(args), sort_keys=True)


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
        self.keys: set[tuple[str, str]] = set()  # their call_key
        self.resolved = 0       # call segments whose JSON is complete (sent as calls, or not a call)
        self.repeated = False   # a complete call equal to one already sent: the reply should end here

    @property
    def called(self) -> bool:
        return bool(self.calls)

    def feed(self, text: str, final: bool = False) -> tuple[str, list[ToolCallDelta]]:
        self.text += text
        content = self._content(final)
        return content, self._call_deltas() if self.calls_from is not None else []

    def _calls_may_start(self, final: bool) -> int | None:
        """Where a call may start in the text so far: after a thinking section that opens the reply
        (the grammar's `think`), else at 0; None while the text is (or may still become) inside one."""
        think = self.syntax.think
        if think is None:
            return 0
        if self.text.startswith(think[0]):
            end = self.text.find(think[1], len(think[0]))
            return end + len(think[1]) if end >= 0 else None
        return None if think[0].startswith(self.text) and not final else 0

    def _content(self, final: bool) -> str:
        if self.calls_from is not None:
            return ""
        if self.syntax.opener:
            after = self._calls_may_start(final)
            if after is None:  # inside the section (or maybe its tag): content, no call can start
                keep = 0 if final or self.text.startswith(self.syntax.think[0]) else len(self.text)
                out, self.content_sent = self.text[self.content_sent:len(self.text) - keep], len(self.text) - keep
                return out
            at = self.text.find(self.trigger, max(after, self.content_sent))
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
            if call is not None and call_key(call) in self.keys:
                # The same call again: a small model allowed several calls repeats its call until
                # max_tokens. Never sent twice; the engine ends the reply there (call_loop.py).
                self.repeated = True
            elif call is not None:
                deltas.append(ToolCallDelta(len(self.calls), new_call_id(), call[0], call[1]))
                self.calls.append(call)
                self.keys.add(call_key(call))
        return deltas


def whole_calls(parser: ToolCallParser, text: str) -> tuple[str, list[dict[str, Any]]]:
    """A non-streamed reply: (content, OpenAI tool_calls) from its whole text."""
    content, deltas = parser.feed(text, final=True)
    return content, [{"id": d.id, "type": "function", "function": {"name": d.name, "arguments": d.arguments}}
                     for d in deltas]
