"""Ollama's side of its API (issue 27): the request bodies in Ollama's names (unknown fields and options
are ignored, as Ollama does), each rewritten as the OpenAI request it means so that both APIs share
one preparation (a refusal names the Ollama field), and the model's description for /api/tags,
/api/ps and /api/show."""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import os
import time
from datetime import datetime, timezone
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from .intake import ApiError, validate
from .preparation import prepare_chat
from .protocol import ChatCompletionRequest

# The Ollama API level these routes follow (format as a JSON schema: 0.5; tools; /api/ps with
# context_length): clients gate features on /api/version. sysinfer's own version is not Ollama's.
OLLAMA_API_VERSION = "0.6.0"
# GGUF general.file_type -> Ollama's quantization_level names (the types this server loads and their kin)
_FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
               11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M",
               18: "Q6_K", 32: "BF16"}
MANAGEMENT = ("pull", "push", "create", "copy", "delete")
# An OpenAI field that refused a value -> the Ollama field the client wrote it in
_OLLAMA_NAMES = {"max_tokens": "options.num_predict", "repetition_penalty": "options.repeat_penalty",
                 "temperature": "options.temperature", "top_p": "options.top_p", "top_k": "options.top_k",
                 "min_p": "options.min_p", "seed": "options.seed", "stop": "options.stop",
                 "presence_penalty": "options.presence_penalty", "frequency_penalty": "options.frequency_penalty",
                 "response_format": "format", "prompt": "prompt", "messages": "messages", "tools": "tools",
                 "tool_choice": "tools"}


# ---- request bodies, in Ollama's names (unknown fields and options are ignored, as Ollama does) ----
class Options(BaseModel):
    model_config = ConfigDict(extra="ignore")
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    num_predict: int | None = None   # -1 (endless) and -2 (fill the context): the server's default
    num_ctx: int | None = None       # accepted; the context is the server's (--ctx-size), not per request
    stop: Union[str, list[str], None] = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


class OllamaFunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)  # an object, not JSON text as OpenAI's


class OllamaToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    function: OllamaFunctionCall


class OllamaMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = ""
    thinking: str | None = None      # an assistant turn's thinking, written back as the template does
    images: list[Any] | None = None
    tool_calls: list[OllamaToolCall] | None = None
    tool_name: str | None = None     # a tool turn: the function whose result it is


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    format: Any = None
    options: Options | None = None
    stream: bool = True              # Ollama streams unless told not to
    keep_alive: Any = None           # accepted: the served model stays loaded anyway
    # A reasoning model's thinking: on or off through the template (enable_thinking); gpt-oss's levels
    # ("low", "medium", "high") mean on. The thinking comes back apart (message.thinking) either way.
    think: Union[bool, Literal["low", "medium", "high"], None] = None


class ChatBody(_Common):
    messages: list[OllamaMessage] = Field(default_factory=list)
    tools: list[Any] | None = None


class GenerateBody(_Common):
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    suffix: str | None = None
    images: list[Any] | None = None


class ModelBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    name: str | None = None          # the older clients' field

    def asked(self) -> str:
        return self.model or self.name or ""


# ---- Ollama request -> the OpenAI request it means ----
def _format(fmt: Any) -> dict[str, Any] | None:
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}
    raise ApiError(400, f'format must be "json" or a JSON schema (an object), not {json.dumps(fmt)[:80]}')


def openai_fields(body: _Common) -> dict[str, Any]:
    o = body.options or Options()
    fields = {"temperature": o.temperature, "top_p": o.top_p, "top_k": o.top_k, "min_p": o.min_p, "seed": o.seed,
              "stop": o.stop, "repetition_penalty": o.repeat_penalty, "presence_penalty": o.presence_penalty,
              "frequency_penalty": o.frequency_penalty, "response_format": _format(body.format),
              "max_tokens": o.num_predict if o.num_predict is not None and o.num_predict > 0 else None,
              "enable_thinking": None if body.think is None else body.think is not False}
    return {k: v for k, v in fields.items() if v is not None}


def openai_chat(body: ChatBody) -> ChatCompletionRequest:
    messages = []
    for i, m in enumerate(body.messages):
        if m.images:
            raise ApiError(400, f"messages[{i}].images: this server's model reads text only; images are not supported")
        msg: dict[str, Any] = {"role": m.role, "content": m.content or ""}
        if m.role == "assistant" and m.thinking:
            msg["reasoning_content"] = m.thinking
        if m.tool_calls:
            msg["tool_calls"] = [{"id": f"call_{i}_{j}", "type": "function",
                                  "function": {"name": c.function.name, "arguments": json.dumps(c.function.arguments)}}
                                 for j, c in enumerate(m.tool_calls)]
        if m.role == "tool" and m.tool_name:
            msg["name"] = m.tool_name
        messages.append(msg)
    extra = {"tools": body.tools} if body.tools else {}
    return openai_request(ChatCompletionRequest, openai_fields(body) | {"messages": messages} | extra)


def openai_request(kind, data: dict[str, Any]):
    """The OpenAI request, checked by the OpenAI routes' own validation; a refusal names the Ollama field."""
    try:
        return validate(kind, json.dumps(data).encode())
    except ApiError as e:
        raise renamed(e) from None


def renamed(e):
    err = e.body["error"]
    param = err.get("param") or ""
    head, _, rest = param.partition(".")
    if head not in _OLLAMA_NAMES or head == _OLLAMA_NAMES[head]:
        return e
    name = _OLLAMA_NAMES[head] + (f".{rest}" if rest and head != "response_format" else "")
    message = err["message"]
    message = message.replace(param, name, 1) if param in message else f"{name}: {message}"
    return ApiError(e.status, message, param=name, code=err.get("code"), headers=e.headers)


def prepare_ollama_chat(tokenizer, req: ChatCompletionRequest, reasoning_apart: bool):
    try:
        return prepare_chat(tokenizer, req, reasoning_apart)
    except ApiError as e:
        raise renamed(e) from None


# ---- models ----
def _served_names(state) -> tuple[str, str]:
    """(name as listed, name without its tag): `smollm2` is listed as `smollm2:latest`."""
    name = state.model_name
    listed = name if ":" in name else f"{name}:latest"
    return listed, listed.removesuffix(":latest")


def resolve(state, asked: str) -> None:
    """Ollama's model names: `name:tag`, `:latest` when no tag is given. Only the served model answers."""
    listed, bare = _served_names(state)
    if asked not in (listed, bare):
        raise ApiError(404, f"model {asked[:200]!r} not found: this server serves {listed!r} "
                                 "(`sysinfer serve --model-name` sets the name)")


def _details(model) -> dict[str, Any]:
    meta = model.metadata
    arch = meta.get("general.architecture", "unknown")
    return {"parent_model": "", "format": "gguf", "family": arch, "families": [arch],
            "parameter_size": _parameter_size(model.n_params),
            "quantization_level": _quantization(model.path, meta.get("general.file_type"))}


@functools.lru_cache(maxsize=4)
def _quantization(path: str, file_type: int | None) -> str:
    """The weights' type as the tensors say (the most common one besides F32, which norms use):
    general.file_type is written by the converter and a requantized file may keep a stale one.
    Reads the file's header once (tags, ps and show run it in a worker thread)."""
    from ..model.model_file import read_model_file

    try:
        kinds = collections.Counter(t.type.name for t in read_model_file(path).tensors.values() if t.type.name != "F32")
    except Exception:  # noqa: BLE001 - the file moved or changed since it was loaded: say what it said
        kinds = collections.Counter()
    return kinds.most_common(1)[0][0] if kinds else _FILE_TYPES.get(file_type, "unknown")


def _parameter_size(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def model_entry(state) -> dict[str, Any]:
    model = state.model
    listed, _ = _served_names(state)
    mtime = os.path.getmtime(model.path) if os.path.exists(model.path) else 0.0
    # Not a digest of the file (hashing gigabytes at each listing is too dear): one of what identifies it.
    digest = hashlib.sha256(f"{model.path}\0{model.file_bytes}\0{mtime}".encode()).hexdigest()
    return {"name": listed, "model": listed, "modified_at": timestamp(mtime), "size": model.file_bytes,
            "digest": digest, "details": _details(model)}


def show_model(state) -> dict[str, Any]:
    model, tok = state.model, state.tokenizer
    meta = model.metadata
    arch = meta.get("general.architecture", "unknown")
    info = {k: v for k, v in meta.items() if not k.startswith("tokenizer.") and isinstance(v, (int, float, str))}
    info["general.parameter_count"] = model.n_params
    info[f"{arch}.context_length"] = state.engine.max_total_tokens  # what this server holds, not the training length
    template = tok.chat_template or ""
    capabilities = ["completion"] + (["tools"] if template and "tools" in template else [])
    return {"license": meta.get("general.license", ""), "modelfile": f"FROM {model.path}\n", "parameters": "",
            "template": template, "details": _details(model), "model_info": info, "capabilities": capabilities,
            "modified_at": timestamp(os.path.getmtime(model.path) if os.path.exists(model.path) else 0.0)}


def timestamp(t: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if t is None else t, timezone.utc).isoformat().replace("+00:00", "Z")


def loaded(body, chat: bool) -> dict[str, Any]:
    """Ollama answers a request with no messages (or an empty prompt) by loading the model: it is."""
    out = {"model": body.model, "created_at": timestamp(), "done": True, "done_reason": "load"}
    return out | ({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
