"""Ollama's native API (issue 27) on the same app, engine, key, limits and metrics as the OpenAI routes,
so tools written for Ollama (EulerCopilot's `functionCall.backend=ollama`, the `ollama` client,
LangChain's ChatOllama) work against `sysinfer serve --port 11434` unchanged.

An Ollama body is checked in Ollama's names, then rewritten as the OpenAI request it means and handed
to api.py's own preparation (chat template, tools, `format` as a grammar, sampling parameters), so both
APIs behave alike; only the answer's shape (NDJSON lines, nanosecond durations) is Ollama's own.
Errors take Ollama's shape, {"error": "..."}.

api.py's helpers come in as `core` (the api module itself): importing api here would be a circle."""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import os
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, AsyncIterator, Literal, Union

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from .engine.errors import ContextLengthError, EngineClosedError, QueueFullError
from .protocol import ChatCompletionRequest, CompletionRequest
from .structured import tools as tool_calls

if TYPE_CHECKING:
    from . import api

# The Ollama API level these routes follow (format as a JSON schema: 0.5; tools; /api/ps with
# context_length): clients gate features on /api/version. sysinfer's own version is not Ollama's.
OLLAMA_API_VERSION = "0.6.0"
NDJSON = "application/x-ndjson"
# GGUF general.file_type -> Ollama's quantization_level names (the types this server loads and their kin)
_FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
               11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M",
               18: "Q6_K", 32: "BF16"}
_MANAGEMENT = ("pull", "push", "create", "copy", "delete")
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


def add_routes(app: FastAPI, state: "api.ServerState", core) -> None:
    """Ollama's routes on `app`; `core`: the api module (its request preparation, key check, errors)."""

    def ollama_errors(route):
        """api.py's errors, and a 500 for anything unexpected (core._guarded), in Ollama's shape."""
        guarded = core._guarded(state)(route)

        @functools.wraps(route)
        async def wrapped(*args, **kwargs):
            try:
                return await guarded(*args, **kwargs)
            except core.ApiError as e:
                state.metrics.requests.labels(status=str(e.status)).inc()
                return JSONResponse({"error": e.body["error"]["message"]}, status_code=e.status, headers=e.headers)
        return wrapped

    @app.head("/", include_in_schema=False)
    async def head_root():
        """Ollama's liveness probe (`ollama` CLI, installers): 200 while the server runs. GET / stays the
        chat page."""
        return Response(status_code=200)

    @app.get("/api/version")
    @ollama_errors
    async def version(request: Request):
        core._check_key(state, request)
        return {"version": OLLAMA_API_VERSION}

    @app.get("/api/tags")
    @ollama_errors
    async def tags(request: Request):
        core._check_key(state, request)
        return {"models": [await core._in_thread(state, _model_entry, state)] if state.ready else []}

    @app.get("/api/ps")
    @ollama_errors
    async def ps(request: Request):
        core._check_key(state, request)
        if not state.ready:
            return {"models": []}
        entry = await core._in_thread(state, _model_entry, state)
        del entry["modified_at"]
        return {"models": [entry | {"expires_at": "2318-01-01T00:00:00Z", "size_vram": 0,
                                    "context_length": state.engine.max_total_tokens}]}

    @app.post("/api/show")
    @ollama_errors
    async def show(request: Request):
        body = await core._parse(state, request, ModelBody)
        _resolve(core, state, body.asked())
        return await core._in_thread(state, _show, state)

    @app.post("/api/chat")
    @ollama_errors
    async def chat(request: Request):
        received = time.perf_counter()
        body = await core._parse(state, request, ChatBody)
        _resolve(core, state, body.model)
        if not body.messages:  # as Ollama: an empty chat only loads the model
            return _loaded(state, body, chat=True)
        req = _openai_chat(core, body)
        prompt_ids, grammar, tools = await core._in_thread(state, _prepare_chat, core, state.tokenizer, req)
        return await _answer(core, state, request, req, body, prompt_ids, grammar, tools, received, chat=True)

    @app.post("/api/generate")
    @ollama_errors
    async def generate(request: Request):
        received = time.perf_counter()
        body = await core._parse(state, request, GenerateBody)
        _resolve(core, state, body.model)
        if body.images:
            raise core.ApiError(400, "images: this server's model reads text only; images are not supported")
        if body.suffix:
            raise core.ApiError(400, "suffix: fill-in-the-middle is not supported")
        if not body.prompt:
            return _loaded(state, body, chat=False)
        tok = state.tokenizer
        if body.raw:  # the prompt as it is, no template
            req = _openai(core, CompletionRequest, _openai_fields(core, body) | {"prompt": body.prompt})
            prompt_ids, grammar = await core._in_thread(
                state, lambda: (tok.encode(req.prompt, add_bos=tok.add_bos), core._output_grammar(tok, req)))
            tools = None
        else:  # the prompt (and system) as a one-turn chat, through the model's template
            messages = ([{"role": "system", "content": body.system}] if body.system else []) + [
                {"role": "user", "content": body.prompt}]
            req = _openai(core, ChatCompletionRequest, _openai_fields(core, body) | {"messages": messages})
            prompt_ids, grammar, tools = await core._in_thread(state, _prepare_chat, core, tok, req)
        return await _answer(core, state, request, req, body, prompt_ids, grammar, tools, received, chat=False)

    for name in _MANAGEMENT:
        app.add_api_route(f"/api/{name}", _management(state, core, name, ollama_errors),
                          methods=["DELETE"] if name == "delete" else ["POST"], include_in_schema=False)

    @app.post("/api/embed")
    @app.post("/api/embeddings")
    @ollama_errors
    async def embed(request: Request):
        core._check_key(state, request)
        raise core.ApiError(501, f"{request.url.path}: this server serves no embedding model "
                                 f"({state.model_name} generates text)")


def _management(state, core, name: str, ollama_errors):
    async def refused(request: Request):
        core._check_key(state, request)
        raise core.ApiError(501, f"/api/{name} is not supported: sysinfer serves the one model it was started "
                                 f"with ({state.model_name}); choose it with `sysinfer serve --model FILE.gguf`")
    refused.__name__ = f"ollama_{name}"
    return ollama_errors(refused)


# ---- models ----
def _served_names(state) -> tuple[str, str]:
    """(name as listed, name without its tag): `smollm2` is listed as `smollm2:latest`."""
    name = state.model_name
    listed = name if ":" in name else f"{name}:latest"
    return listed, listed.removesuffix(":latest")


def _resolve(core, state, asked: str) -> None:
    """Ollama's model names: `name:tag`, `:latest` when no tag is given. Only the served model answers."""
    listed, bare = _served_names(state)
    if asked not in (listed, bare):
        raise core.ApiError(404, f"model {asked[:200]!r} not found: this server serves {listed!r} "
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
    from .model.model_file import read_model_file

    try:
        kinds = collections.Counter(t.type.name for t in read_model_file(path).tensors.values() if t.type.name != "F32")
    except Exception:  # noqa: BLE001 - the file moved or changed since it was loaded: say what it said
        kinds = collections.Counter()
    return kinds.most_common(1)[0][0] if kinds else _FILE_TYPES.get(file_type, "unknown")


def _parameter_size(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def _model_entry(state) -> dict[str, Any]:
    model = state.model
    listed, _ = _served_names(state)
    mtime = os.path.getmtime(model.path) if os.path.exists(model.path) else 0.0
    # Not a digest of the file (hashing gigabytes at each listing is too dear): one of what identifies it.
    digest = hashlib.sha256(f"{model.path}\0{model.file_bytes}\0{mtime}".encode()).hexdigest()
    return {"name": listed, "model": listed, "modified_at": _timestamp(mtime), "size": model.file_bytes,
            "digest": digest, "details": _details(model)}


def _show(state) -> dict[str, Any]:
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
            "modified_at": _timestamp(os.path.getmtime(model.path) if os.path.exists(model.path) else 0.0)}


def _timestamp(t: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if t is None else t, timezone.utc).isoformat().replace("+00:00", "Z")


def _loaded(state, body, chat: bool) -> dict[str, Any]:
    """Ollama answers a request with no messages (or an empty prompt) by loading the model: it is."""
    out = {"model": body.model, "created_at": _timestamp(), "done": True, "done_reason": "load"}
    return out | ({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})


# ---- Ollama request -> the OpenAI request it means ----
def _format(core, fmt: Any) -> dict[str, Any] | None:
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}
    raise core.ApiError(400, f'format must be "json" or a JSON schema (an object), not {json.dumps(fmt)[:80]}')


def _openai_fields(core, body: _Common) -> dict[str, Any]:
    o = body.options or Options()
    fields = {"temperature": o.temperature, "top_p": o.top_p, "top_k": o.top_k, "min_p": o.min_p, "seed": o.seed,
              "stop": o.stop, "repetition_penalty": o.repeat_penalty, "presence_penalty": o.presence_penalty,
              "frequency_penalty": o.frequency_penalty, "response_format": _format(core, body.format),
              "max_tokens": o.num_predict if o.num_predict is not None and o.num_predict > 0 else None,
              "enable_thinking": None if body.think is None else body.think is not False}
    return {k: v for k, v in fields.items() if v is not None}


def _openai_chat(core, body: ChatBody) -> ChatCompletionRequest:
    messages = []
    for i, m in enumerate(body.messages):
        if m.images:
            raise core.ApiError(400, f"messages[{i}].images: this server's model reads text only; images are not supported")
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
    return _openai(core, ChatCompletionRequest, _openai_fields(core, body) | {"messages": messages} | extra)


def _openai(core, kind, data: dict[str, Any]):
    """The OpenAI request, checked by api.py's own validation; a refusal names the Ollama field."""
    try:
        return core._validate(kind, json.dumps(data).encode())
    except core.ApiError as e:
        raise _renamed(core, e) from None


def _renamed(core, e):
    err = e.body["error"]
    param = err.get("param") or ""
    head, _, rest = param.partition(".")
    if head not in _OLLAMA_NAMES or head == _OLLAMA_NAMES[head]:
        return e
    name = _OLLAMA_NAMES[head] + (f".{rest}" if rest and head != "response_format" else "")
    message = err["message"]
    message = message.replace(param, name, 1) if param in message else f"{name}: {message}"
    return core.ApiError(e.status, message, param=name, code=err.get("code"), headers=e.headers)


def _prepare_chat(core, tokenizer, req: ChatCompletionRequest):
    try:
        return core._prepare_chat(tokenizer, req)
    except core.ApiError as e:
        raise _renamed(core, e) from None


# ---- the answer ----
def _submit(core, state, req, prompt_ids: list[int], grammar, chat: bool):
    try:
        params = core._sampling(state, req, len(prompt_ids), chat, grammar)  # chat: through the template
    except core.ApiError as e:
        raise _renamed(core, e) from None
    try:
        seq = state.engine.submit(prompt_ids, params)
    except ContextLengthError as e:
        raise core.ApiError(400, str(e)) from None
    except QueueFullError as e:
        raise core.ApiError(429, f"server busy: {e}", headers={"Retry-After": "2"}) from None
    except EngineClosedError as e:
        raise core.ApiError(503, str(e), headers={"Retry-After": core.RETRY_AFTER_SECONDS}) from None
    state.metrics.prompt_tokens.inc(len(prompt_ids))
    return seq


class _Clock:
    """Ollama's durations (nanoseconds): the prompt's is until the first token, the rest is eval's."""

    def __init__(self, received: float):
        self.received = received
        self.submitted = self.first = None

    def final(self, usage, reason: str | None) -> dict[str, Any]:
        end = time.perf_counter()
        submitted = self.submitted or self.received
        first = self.first or end
        ns = lambda s: max(0, int(s * 1e9))  # noqa: E731
        return {"done": True, "done_reason": _done_reason(reason), "total_duration": ns(end - self.received),
                "load_duration": 0, "prompt_eval_count": usage.prompt_tokens if usage else 0,
                "prompt_eval_duration": ns(first - submitted), "eval_count": usage.completion_tokens if usage else 0,
                "eval_duration": ns(end - first)}


def _done_reason(reason: str | None) -> str:
    return {None: "stop", "tool_calls": "stop"}.get(reason, reason)


def _ollama_calls(deltas) -> list[dict[str, Any]]:
    return [{"function": {"index": d.index, "name": d.name, "arguments": json.loads(d.arguments)}} for d in deltas]


def _piece(body, chat: bool, text: str, calls: list | None = None, thinking: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"model": body.model, "created_at": _timestamp()}
    if chat:
        out["message"] = ({"role": "assistant", "content": text} | ({"thinking": thinking} if thinking else {})
                          | ({"tool_calls": calls} if calls else {}))
    else:
        out |= {"response": text} | ({"thinking": thinking} if thinking else {})
    return out | {"done": False}


async def _answer(core, state, request: Request, req, body, prompt_ids, grammar, tools, received: float, chat: bool):
    seq = _submit(core, state, req, prompt_ids, grammar, isinstance(req, ChatCompletionRequest))
    clock = _Clock(received)
    clock.submitted = time.perf_counter()
    deltas = core._timed(state, state.engine.stream(seq), received)
    parser = tool_calls.ToolCallParser(*tools) if tools else None
    if body.stream:
        state.metrics.requests.labels(status="200").inc()
        return StreamingResponse(_ndjson(deltas, body, chat, parser, clock), media_type=NDJSON,
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    text, thinking, calls, usage, reason, error = [], [], [], None, None, None
    async with anyio.create_task_group() as tg:
        tg.start_soon(core._abort_on_disconnect, request, state.engine, seq.request_id)
        async for d in deltas:
            if d.error:  # raised after the task group: inside it, it would come out as an ExceptionGroup
                state.engine.abort_request(seq.request_id)
                error = d.error
                break
            clock.first = clock.first or (time.perf_counter() if d.token_ids else None)
            text.append(d.text)
            thinking.append(d.reasoning)
            if d.finish_reason:
                usage, reason = d.usage, d.finish_reason
        tg.cancel_scope.cancel()
    if error:
        raise core.ApiError(500, error)
    if reason == "abort" and await request.is_disconnected():
        state.metrics.requests.labels(status="499").inc()
        return Response(status_code=499)
    whole = "".join(text)
    if parser is not None:
        content, deltas_ = parser.feed(whole, final=True)
        whole, calls = content, _ollama_calls(deltas_)
    state.metrics.requests.labels(status="200").inc()
    return _piece(body, chat, whole, calls, "".join(thinking)) | clock.final(usage, reason)


async def _ndjson(deltas: AsyncIterator, body, chat: bool, parser, clock: _Clock) -> AsyncIterator[str]:
    """One JSON object a line; the last has done: true and the counts. An error after the status line
    is a line {"error": ...}, which Ollama's clients raise."""
    line = lambda obj: json.dumps(obj, ensure_ascii=False) + "\n"  # noqa: E731
    usage = reason = None
    try:
        async for d in deltas:
            if d.error:
                yield line({"error": d.error})
                return
            if d.token_ids and clock.first is None:
                clock.first = time.perf_counter()
            text, calls = d.text, []
            if parser is not None:
                text, found = parser.feed(d.text, final=bool(d.finish_reason))
                calls = _ollama_calls(found)
            if text or calls or d.reasoning:
                yield line(_piece(body, chat, text, calls, d.reasoning))
            if d.finish_reason:
                usage, reason = d.usage, d.finish_reason
    except Exception as e:  # noqa: BLE001 - the status line is sent: say it in the stream
        import logging
        logging.getLogger("sysinfer.api").error("ollama stream failed: %s: %s", type(e).__name__, str(e)[:300])
        yield line({"error": "internal server error"})
        return
    yield line(_piece(body, chat, "") | clock.final(usage, reason))
