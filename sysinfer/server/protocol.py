"""OpenAI's request bodies (the parts sysinfer serves), as pydantic models. Unknown request fields are
ignored, as OpenAI's own clients send extras (EulerCopilot sends `enable_thinking` through extra_body).
The answers' shapes are in shaping.py."""

from __future__ import annotations

import json
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ..engine.sampling import MAX_LOGIT_BIAS, MAX_LOGPROBS, MAX_TEMPERATURE

MAX_CHOICES = 16  # `n`: each choice is a whole sequence on the CPU, so a bound well under OpenAI's 128


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(max_length=64)
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str = Field(default="", max_length=200)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Union[str, list[TextPart], None] = None
    tool_calls: list[ToolCall] | None = None  # an assistant turn that called tools
    tool_call_id: str | None = None           # a tool turn: the call it answers
    name: str | None = None
    reasoning_content: str | None = None      # an assistant turn's thinking, as we returned it (the template decides)

    def as_template_message(self) -> dict[str, Any]:
        role = "system" if self.role == "developer" else self.role
        if isinstance(self.content, list):
            msg: dict[str, Any] = {"role": role, "content": [p.model_dump() for p in self.content]}
        else:
            msg = {"role": role, "content": self.content or ""}
        if self.tool_calls:  # arguments as objects, as chat templates (and our generic format) write them
            msg["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.function.name, "arguments": _json_or_text(c.function.arguments)}}
                                 for c in self.tool_calls]
        if self.role == "assistant" and self.reasoning_content:
            msg["reasoning_content"] = self.reasoning_content
        if self.role == "tool":
            msg.update({k: v for k, v in (("tool_call_id", self.tool_call_id), ("name", self.name)) if v is not None})
        return msg


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


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
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool = False     # vLLM's and llama-server's: generate max_tokens even past end-of-sequence
    # Structured output and tools (structured/): checked there, each refusal naming its field.
    response_format: Any = None
    guided_json: Any = None      # vLLM's, also sent inside extra_body (which lands at the top level)
    guided_regex: Any = None
    guided_choice: Any = None
    guided_grammar: Any = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v):
        if v is None:
            return []
        v = [v] if isinstance(v, str) else v
        if len(v) > 16 or any(not s for s in v):
            raise ValueError("stop must be up to 16 non-empty strings")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _token_biases(cls, v):
        """OpenAI's form: token ids as strings -> a bias in [-100, 100]. The ids are checked against the
        vocabulary by the server, which knows it."""
        if v is None:
            return {}
        out: dict[int, float] = {}
        for key, bias in v.items():
            if not (key.isascii() and key.isdigit() and len(key) <= 9):
                raise ValueError(f"keys must be token ids (non-negative integers as strings), got {key[:40]!r}")
            if not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
                raise ValueError(f"values must be in [{-MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}], got {bias!r} for {key}")
            out[int(key)] = bias
        return out

    def top_logprobs_asked(self) -> int | None:
        """None: no logprobs; k: the sampled token's logprob and the k most likely at each position."""
        raise NotImplementedError


class ChatCompletionRequest(CommonRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    # Reasoning models: EulerCopilot sends enable_thinking at the top level, vLLM's and llama.cpp's
    # clients inside chat_template_kwargs; both reach the chat template. thinking_budget is Qwen's name.
    enable_thinking: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    thinking_budget: int | None = Field(default=None, ge=0)

    def template_variables(self) -> dict[str, Any]:
        """Extra chat-template variables: chat_template_kwargs, and the top-level enable_thinking."""
        out = dict(self.chat_template_kwargs or {})
        if self.enable_thinking is not None:
            out["enable_thinking"] = self.enable_thinking
        return out

    @field_validator("top_logprobs")
    @classmethod
    def _top_needs_logprobs(cls, v, info: ValidationInfo):
        if v and not info.data.get("logprobs"):  # as OpenAI: top_logprobs means nothing alone
            raise ValueError("top_logprobs requires logprobs to be true")
        return v

    def top_logprobs_asked(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(CommonRequest):
    prompt: Union[str, list[str]]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)  # the legacy integer (OpenAI allows 5)

    def top_logprobs_asked(self) -> int | None:
        return self.logprobs

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
