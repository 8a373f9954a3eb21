"""OpenAI request and response shapes (the parts sysinfer serves). Unknown request fields are ignored,
as OpenAI's own clients send extras (EulerCopilot sends `enable_thinking` through extra_body).

Requests are pydantic models; responses are built here too (whole bodies, SSE chunks, errors), so
api.py holds routes only."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .engine.sampling import MAX_TEMPERATURE


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer"]
    content: Union[str, list[TextPart], None] = None

    def as_template_message(self) -> dict[str, Any]:
        role = "system" if self.role == "developer" else self.role
        if isinstance(self.content, list):
            return {"role": role, "content": [p.model_dump() for p in self.content]}
        return {"role": role, "content": self.content or ""}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class CommonRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=MAX_TEMPERATURE)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    seed: int | None = None
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    n: int = Field(default=1, ge=1, le=1)
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v):
        if v is None:
            return []
        v = [v] if isinstance(v, str) else v
        if len(v) > 16 or any(not s for s in v):
            raise ValueError("stop must be up to 16 non-empty strings")
        return v


class ChatCompletionRequest(CommonRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(CommonRequest):
    prompt: Union[str, list[str]]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("exactly one prompt is supported")
            v = v[0]
        if not v:
            raise ValueError("prompt must not be empty")
        return v


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
                                          "rejected_prediction_tokens": u.rejected_prediction_tokens}}


class ResponseShaper:
    """One response's bodies: `meta` (id, created, model) is shared by every chunk of a stream."""

    def __init__(self, model_name: str, chat: bool):
        self.chat = chat
        self.meta = {"id": new_id("chatcmpl" if chat else "cmpl"), "created": now(), "model": model_name}

    def whole(self, text: str, finish_reason: str | None, usage) -> dict[str, Any]:
        """The body of a non-streaming response."""
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {**self.meta, "object": "chat.completion" if self.chat else "text_completion", "choices": [choice],
                "usage": usage_body(usage)}

    # ---- server-sent events ----
    def _event(self, body: dict[str, Any]) -> str:
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def chunk(self, text: str | None, finish_reason: str | None = None, *, first: bool = False,
              with_usage_field: bool = False) -> str:
        """One streamed chunk; a chat stream's first chunk carries the role and no text."""
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else (
                {"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
        body = {**self.meta, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "choices": [choice]}
        if with_usage_field:
            body["usage"] = None  # as OpenAI sends when include_usage is on: usage comes in the last chunk
        return self._event(body)

    def usage_chunk(self, usage) -> str:
        return self._event({**self.meta, "object": "chat.completion.chunk" if self.chat else "text_completion",
                            "choices": [], "usage": usage_body(usage)})

    def error_event(self, message: str, type_: str = "server_error", code: str | None = None) -> str:
        """An error after the stream began (the status line is already sent): the `openai` client
        raises it as an APIError."""
        return self._event(error_body(message, type_, code=code))

    DONE = "data: [DONE]\n\n"
