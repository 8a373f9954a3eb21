"""The OpenAI-compatible HTTP server: `uvicorn sysinfer.api:app` (configured from SYSINFER_* env) or
`sysinfer serve`. The model loads in the background at start-up; /health says 503 until it is ready.
"""

from __future__ import annotations

import hmac
import json
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import ValidationError

from .config import ServerConfig, kv_blocks_for
from .engine.async_engine import AsyncEngine, Delta
from .engine.errors import ContextLengthError, EngineClosedError, QueueFullError
from .engine.sampling import SamplingParams
from .metrics import Metrics
from .model.chat_template import ChatTemplateError
from .protocol import ChatCompletionRequest, CommonRequest, CompletionRequest, error_body, new_id, now


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.body, self.headers = status, error_body(message, type_, param, code), headers


class ServerState:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.model = self.tokenizer = self.engine = None
        self.model_name = config.model_name or "sysinfer"
        self.load_error: str | None = None
        self.metrics = Metrics()

    @property
    def ready(self) -> bool:
        return self.engine is not None


def _load(state: ServerState) -> None:
    """Runs in a worker thread: validate and load the model, build tokenizer and engine."""
    from tqdm import tqdm

    from .model.default_model import default_model_path
    from .model.gguf_loader import read_model_file
    from .model.loader import load_model
    from .model.tokenizer import Tokenizer

    cfg = state.config
    path = cfg.model or default_model_path()
    hp = read_model_file(path).hparams
    ctx = min(cfg.ctx_size, hp.n_ctx_train)
    with tqdm(total=hp.n_layer, desc=f"loading {path.rsplit('/', 1)[-1]}", unit="layer") as bar:
        model = load_model(path, threads=cfg.threads, n_ctx=ctx, kv_blocks=kv_blocks_for(cfg, hp),
                           block_size=cfg.block_size, max_step_tokens=cfg.max_step_tokens,
                           max_out_rows=max(cfg.max_batch, 1), progress=lambda i, n: bar.update(1))
    state.tokenizer = Tokenizer.from_metadata(model.metadata)
    state.model = model
    state.model_name = cfg.model_name or path.rsplit("/", 1)[-1].removesuffix(".gguf")


async def _load_and_run(state: ServerState) -> None:
    try:
        await anyio.to_thread.run_sync(_load, state)
    except Exception as e:  # reported by /health; the process stays up to say why
        state.load_error = f"{type(e).__name__}: {e}"
        print(f"sysinfer: model failed to load: {state.load_error}", flush=True)
        return
    cfg = state.config
    state.engine = AsyncEngine(state.model, state.tokenizer, max_batch=cfg.max_batch, max_queue=cfg.max_queue,
                               enable_prefix_cache=cfg.prefix_cache)
    print(f"sysinfer: serving {state.model_name} ({state.model.kernels} kernels, {state.model.n_threads} threads, "
          f"{state.model.n_kv_blocks} KV blocks) on port {cfg.port}", flush=True)
    await state.engine.run()


def create_app(config: ServerConfig | None = None) -> FastAPI:
    state = ServerState(config or ServerConfig.from_env())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_load_and_run, state)
            try:
                yield
            finally:
                if state.engine is not None:
                    with anyio.move_on_after(10):
                        await state.engine.shutdown()
                tg.cancel_scope.cancel()

    app = FastAPI(title="sysinfer", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.sysinfer = state

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        state.metrics.requests.labels(status=str(exc.status)).inc()
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # never a traceback to a client
        state.metrics.requests.labels(status="500").inc()
        print(f"sysinfer: internal error on {request.url.path}: {type(exc).__name__}: {exc}", flush=True)
        return JSONResponse(error_body("internal server error", "server_error"), status_code=500)

    @app.exception_handler(404)
    async def not_found(request: Request, exc):
        return JSONResponse(error_body(f"no route {request.url.path}", code="not_found"), status_code=404)

    @app.exception_handler(405)
    async def bad_method(request: Request, exc):
        return JSONResponse(error_body(f"{request.method} is not allowed on {request.url.path}"), status_code=405)

    @app.get("/health")
    async def health():
        if state.load_error:
            return JSONResponse({"status": "error", "error": state.load_error}, status_code=503)
        if not state.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok", "model": state.model_name}

    @app.get("/metrics")
    async def metrics():
        if state.ready:
            state.metrics.observe_engine(state.engine.snapshot())
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request):
        _check_key(state, request)
        return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": now(),
                                            "owned_by": "sysinfer"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = await _parse(state, request, ChatCompletionRequest)
        try:
            prompt_ids = state.tokenizer.apply_chat_template([m.as_template_message() for m in req.messages])
        except ChatTemplateError as e:
            raise ApiError(400, str(e), param="messages") from None
        return await _complete(state, req, prompt_ids, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await _parse(state, request, CompletionRequest)
        prompt_ids = state.tokenizer.encode(req.prompt, add_bos=state.tokenizer.add_bos)
        return await _complete(state, req, prompt_ids, chat=False)

    return app


def _check_key(state: ServerState, request: Request) -> None:
    key = state.config.api_key
    if not key:
        return
    given = request.headers.get("authorization", "")
    token = given[7:] if given.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(token.encode(), key.encode()):
        raise ApiError(401, "invalid or missing API key (Authorization: Bearer ...)", "authentication_error",
                       code="invalid_api_key")


async def _read_body(state: ServerState, request: Request) -> bytes:
    limit = state.config.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body over {limit} bytes", code="request_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body over {limit} bytes", code="request_too_large")
    return bytes(body)


async def _parse(state: ServerState, request: Request, kind):
    _check_key(state, request)
    if not state.ready:
        raise ApiError(503, "the model is still loading" if not state.load_error else "the model failed to load",
                       "server_error", code="model_not_ready", headers={"Retry-After": "5"})
    try:
        data = json.loads(await _read_body(state, request))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    try:
        return kind.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        raise ApiError(400, f"{param}: {err['msg']}" if param else err["msg"], param=param) from None


def _sampling(state: ServerState, req: CommonRequest, n_prompt: int, chat: bool) -> SamplingParams:
    if req.response_format and req.response_format.get("type") not in (None, "text"):
        raise ApiError(400, "response_format json_object/json_schema is not supported yet", param="response_format",
                       code="unsupported_parameter")
    if req.tools:
        raise ApiError(400, "tools are not supported yet", param="tools", code="unsupported_parameter")
    asked = (getattr(req, "max_completion_tokens", None) if chat else None) or req.max_tokens
    room = state.model.n_ctx - n_prompt
    if asked is None:
        if room < 1:
            raise ApiError(400, f"the prompt has {n_prompt} tokens; this model's context is {state.model.n_ctx}",
                           param="messages" if chat else "prompt", code="context_length_exceeded")
        asked = min(state.config.max_tokens, room)
    try:
        return SamplingParams(
            temperature=state.config.temperature if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p, top_k=req.top_k or 0, min_p=req.min_p or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0, presence_penalty=req.presence_penalty or 0.0,
            repetition_penalty=req.repetition_penalty or 1.0, seed=req.seed, max_tokens=asked, stop=req.stop or [])
    except ValueError as e:
        raise ApiError(400, str(e)) from None


async def _complete(state: ServerState, req: CommonRequest, prompt_ids: list[int], chat: bool):
    params = _sampling(state, req, len(prompt_ids), chat)
    received = time.perf_counter()
    try:
        seq = state.engine.submit(prompt_ids, params)
    except ContextLengthError as e:
        raise ApiError(400, str(e), param="messages" if chat else "prompt", code="context_length_exceeded") from None
    except QueueFullError as e:
        raise ApiError(429, f"server busy: {e}", "rate_limit_error", code="queue_full", headers={"Retry-After": "2"}) from None
    except EngineClosedError as e:
        raise ApiError(503, str(e), "server_error", code="shutting_down") from None
    state.metrics.prompt_tokens.inc(len(prompt_ids))
    meta = {"id": new_id("chatcmpl" if chat else "cmpl"), "created": now(), "model": state.model_name}
    deltas = _timed(state, state.engine.stream(seq), received)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        state.metrics.requests.labels(status="200").inc()
        return StreamingResponse(_sse(deltas, meta, chat, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    text, finish, usage = "", None, None
    async for d in deltas:
        text += d.text
        finish, usage = d.finish_reason or finish, d.usage or usage
    state.metrics.requests.labels(status="200").inc()
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {**meta, "object": "chat.completion" if chat else "text_completion", "choices": [choice],
            "usage": _usage(usage)}


async def _timed(state: ServerState, deltas: AsyncIterator[Delta], received: float) -> AsyncIterator[Delta]:
    last = None
    async for d in deltas:
        t = time.perf_counter()
        if d.token_ids:
            state.metrics.generated_tokens.inc(len(d.token_ids))
            if last is None:
                state.metrics.ttft.observe(t - received)
            else:
                state.metrics.itl.observe(t - last)
            last = t
        yield d


def _usage(u) -> dict[str, Any]:
    if u is None:
        return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens, "prompt_tokens_details": {"cached_tokens": u.cached_tokens}}


async def _sse(deltas: AsyncIterator[Delta], meta: dict[str, Any], chat: bool, include_usage: bool) -> AsyncIterator[str]:
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta_text: str | None, finish: str | None, first: bool = False) -> str:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else (
                {"content": delta_text} if delta_text else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": delta_text or "", "finish_reason": finish, "logprobs": None}
        body = {**meta, "object": obj, "choices": [choice]}
        if include_usage:
            body["usage"] = None
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    if chat:
        yield chunk(None, None, first=True)
    usage = None
    async for d in deltas:
        if d.finish_reason:
            usage = d.usage
            yield chunk(d.text, d.finish_reason)
        elif d.text:
            yield chunk(d.text, None)
    if include_usage:
        body = {**meta, "object": obj, "choices": [], "usage": _usage(usage)}
        yield f"data: {json.dumps(body)}\n\n"
    yield "data: [DONE]\n\n"


_app: FastAPI | None = None


def __getattr__(name: str):
    """`uvicorn sysinfer.api:app`: the app is built from SYSINFER_* on first access (importing this
    module for create_app reads no environment and loads no model)."""
    global _app
    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(name)
