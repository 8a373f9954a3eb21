"""OpenAI's response shapes: whole bodies, server-sent-event chunks (text, reasoning, tool-call
deltas, usage, errors) and the error body. protocol.py holds the request models; this, what goes back."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def usage_body(u) -> dict[str, Any]:
    """OpenAI's usage object from the engine's Usage (None: nothing was generated)."""
    if u is None:
        return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens, "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
            # OpenAI's fields for predicted outputs, which is what speculative drafts are
            "completion_tokens_details": {"accepted_prediction_tokens": u.accepted_prediction_tokens,
                                          "rejected_prediction_tokens": u.rejected_prediction_tokens,
                                          "reasoning_tokens": u.reasoning_tokens}}


@dataclass
class ChoiceResult:
    """One choice of a non-streaming answer, as the server collected it."""
    index: int
    text: str = ""
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None  # already in the endpoint's shape (logprob_format.py)
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI-shaped calls parsed from the text (chat)
    reasoning: str = ""  # a reasoning model's thinking section (chat): message.reasoning_content


class ResponseShaper:
    """One response's bodies: `meta` (id, created, model) is shared by every chunk of a stream."""

    def __init__(self, model_name: str, chat: bool):
        self.chat = chat
        self.meta = {"id": new_id("chatcmpl" if chat else "cmpl"), "created": now(), "model": model_name}

    def whole(self, choices: list[ChoiceResult], usage) -> dict[str, Any]:
        """The body of a non-streaming response (a chat reply that called tools has `tool_calls`,
        and its content is null when the model wrote no text besides the calls)."""
        bodies = []
        for c in choices:
            body: dict[str, Any] = {"index": c.index, "finish_reason": c.finish_reason, "logprobs": c.logprobs}
            if self.chat:
                body["message"] = {"role": "assistant", "content": c.text}
                if c.tool_calls:
                    body["message"] = {"role": "assistant", "content": c.text or None, "tool_calls": c.tool_calls}
                if c.reasoning:  # only a reply that thought has it (clients test for the attribute)
                    body["message"]["reasoning_content"] = c.reasoning
            else:
                body["text"] = c.text
            bodies.append(body)
        return {**self.meta, "object": "chat.completion" if self.chat else "text_completion", "choices": bodies,
                "usage": usage_body(usage)}

    # ---- server-sent events ----
    def _event(self, body: dict[str, Any]) -> str:
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def chunk(self, text: str | None, finish_reason: str | None = None, *, first: bool = False,
              with_usage_field: bool = False, index: int = 0, logprobs: dict[str, Any] | None = None,
              reasoning: str = "") -> str:
        """One streamed chunk of choice `index`; a chat stream's first chunk of each choice carries the
        role and no text; `reasoning`: thinking-section text, as delta.reasoning_content."""
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else (
                {"content": text} if text else {})
            if reasoning:
                delta["reasoning_content"] = reasoning
            choice = {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": logprobs}
        else:
            choice = {"index": index, "text": text or "", "finish_reason": finish_reason, "logprobs": logprobs}
        body = {**self.meta, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "choices": [choice]}
        if with_usage_field:
            body["usage"] = None  # as OpenAI sends when include_usage is on: usage comes in the last chunk
        return self._event(body)

    def tool_chunk(self, deltas, with_usage_field: bool = False, index: int = 0,
                   logprobs: dict[str, Any] | None = None) -> str:
        """Tool-call deltas as OpenAI streams them: a call's first delta has its index, id, type and
        name (arguments ""), the next ones only index and the next fragment of the arguments."""
        calls = []
        for d in deltas:
            if d.id is not None:
                calls.append({"index": d.index, "id": d.id, "type": "function",
                              "function": {"name": d.name, "arguments": d.arguments}})
            else:
                calls.append({"index": d.index, "function": {"arguments": d.arguments}})
        body = {**self.meta, "object": "chat.completion.chunk",
                "choices": [{"index": index, "delta": {"tool_calls": calls}, "finish_reason": None,
                             "logprobs": logprobs}]}
        if with_usage_field:
            body["usage"] = None
        return self._event(body)

    def usage_chunk(self, usage) -> str:
        return self._event({**self.meta, "object": "chat.completion.chunk" if self.chat else "text_completion",
                            "choices": [], "usage": usage_body(usage)})

    def error_event(self, message: str, type_: str = "server_error", code: str | None = "internal_error") -> str:
        """An error after the stream began (the status line is already sent): the `openai` client
        raises it as an APIError."""
        return self._event(error_body(message, type_, code=code))

    DONE = "data: [DONE]\n\n"
