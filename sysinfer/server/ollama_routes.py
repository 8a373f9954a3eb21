"""Ollama's native API (issue 27) on the same app, engine, key, limits and metrics as the OpenAI routes,
so tools written for Ollama (EulerCopilot's `functionCall.backend=ollama`, the `ollama` client,
LangChain's ChatOllama) work against `sysinfer serve --port 11434` unchanged.

An Ollama body (ollama_shapes.py) is rewritten as the OpenAI request it means and prepared as the
OpenAI routes prepare theirs (chat template, tools, `format` as a grammar, sampling parameters), so
both APIs behave alike; only the answer's shape (NDJSON lines, nanosecond durations) is Ollama's own.
Errors take Ollama's shape, {"error": "..."}."""

from __future__ import annotations

import functools
import json
import logging
import time
from typing import Any, AsyncIterator

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..structured.tool_parser import ToolCallParser
from .intake import ApiError, check_key, guarded, in_thread, parse, read_body, validate
from .ollama_shapes import (MANAGEMENT, OLLAMA_API_VERSION, ChatBody, GenerateBody, ModelBody, loaded, model_entry,
                            openai_chat, openai_fields, openai_request, prepare_ollama_chat, renamed, resolve, show_model,
                            timestamp)
from .preparation import prepare_completion, sampling_params
from .protocol import ChatCompletionRequest, CompletionRequest
from .encoder_routes import encoder_entry, encoder_show, ollama_names
from .state import state_of
from .streaming import abort_on_disconnect, submit, timed

NDJSON = "application/x-ndjson"
log = logging.getLogger("sysinfer.api")
router = APIRouter()


def ollama_errors(route):
    """The routes' errors, and a 500 for anything unexpected (intake.guarded), in Ollama's shape."""
    checked = guarded(route)

    @functools.wraps(route)
    async def wrapped(request: Request):
        try:
            return await checked(request=request)
        except ApiError as e:
            state_of(request).metrics.requests.labels(status=str(e.status)).inc()
            return JSONResponse({"error": e.body["error"]["message"]}, status_code=e.status, headers=e.headers)
    return wrapped


@router.head("/", include_in_schema=False)
async def head_root():
    """Ollama's liveness probe (`ollama` CLI, installers): 200 while the server runs. GET / stays the
    chat page."""
    return Response(status_code=200)


@router.get("/api/version")
@ollama_errors
async def version(request: Request):
    check_key(state_of(request), request)
    return {"version": OLLAMA_API_VERSION}


async def _served(request: Request) -> list[tuple[dict[str, Any], int]]:
    """(entry, context length) of each model served (none while loading), once the key is checked."""
    state = state_of(request)
    check_key(state, request)
    if not state.ready:
        return []
    served = []
    if state.engine is not None:
        served.append((await in_thread(state, model_entry, state), state.engine.max_total_tokens))
    return served + [(encoder_entry(e), e.model.n_ctx) for e in state.encoders.values()]


@router.get("/api/tags")
@ollama_errors
async def tags(request: Request):
    return {"models": [entry for entry, _ in await _served(request)]}


@router.get("/api/ps")
@ollama_errors
async def ps(request: Request):
    return {"models": [{k: v for k, v in entry.items() if k != "modified_at"}
                       | {"context_length": n_ctx, "expires_at": "2318-01-01T00:00:00Z", "size_vram": 0}
                       for entry, n_ctx in await _served(request)]}


@router.post("/api/show")
@ollama_errors
async def show(request: Request):
    state = state_of(request)
    if state.ready and state.encoders:  # an encoder's name answers with what the server knows of it
        check_key(state, request)
        body = await in_thread(state, validate, ModelBody, await read_body(state, request))
        shown = encoder_show(state, body.asked())
        if shown is not None:
            return shown
        if state.engine is None:
            raise ApiError(404, f"model {body.asked()[:200]!r} not found: this server serves "
                                f"{', '.join(repr(ollama_names(e.name)[0]) for e in state.encoders.values())}")
    else:
        body = await parse(state, request, ModelBody)
    resolve(state, body.asked())
    return await in_thread(state, show_model, state)


async def _generating(request: Request, kind):
    """(state, body) of a request to generate: checked, parsed and naming the served model."""
    state = state_of(request)
    body = await parse(state, request, kind)
    resolve(state, body.model)
    return state, body


@router.post("/api/chat")
@ollama_errors
async def chat(request: Request):
    received = time.perf_counter()
    state, body = await _generating(request, ChatBody)
    if not body.messages:  # as Ollama: an empty chat only loads the model
        return loaded(body, chat=True)
    req = openai_chat(body)
    prompt_ids, grammar, tools = await in_thread(state, prepare_ollama_chat, state.tokenizer, req,
                                                 state.config.reasoning_format == "deepseek")
    return await _answer(state, request, req, body, prompt_ids, grammar, tools, received, chat=True)


@router.post("/api/generate")
@ollama_errors
async def generate(request: Request):
    received = time.perf_counter()
    state, body = await _generating(request, GenerateBody)
    if body.images:
        raise ApiError(400, "images: this server's model reads text only; images are not supported")
    if body.suffix:
        raise ApiError(400, "suffix: fill-in-the-middle is not supported")
    if not body.prompt:
        return loaded(body, chat=False)
    tok = state.tokenizer
    if body.raw:  # the prompt as it is, no template
        req = openai_request(CompletionRequest, openai_fields(body) | {"prompt": body.prompt})
        prompt_ids, grammar = await in_thread(state, prepare_completion, tok, req)
        tools = None
    else:  # the prompt (and system) as a one-turn chat, through the model's template
        messages = ([{"role": "system", "content": body.system}] if body.system else []) + [
            {"role": "user", "content": body.prompt}]
        req = openai_request(ChatCompletionRequest, openai_fields(body) | {"messages": messages})
        prompt_ids, grammar, tools = await in_thread(state, prepare_ollama_chat, tok, req,
                                                     state.config.reasoning_format == "deepseek")
    return await _answer(state, request, req, body, prompt_ids, grammar, tools, received, chat=False)


def _management(name: str):
    async def refused(request: Request):
        state = state_of(request)
        check_key(state, request)
        raise ApiError(501, f"/api/{name} is not supported: sysinfer serves the one model it was started "
                            f"with ({state.model_name}); choose it with `sysinfer serve --model FILE.gguf`")
    refused.__name__ = f"ollama_{name}"
    return ollama_errors(refused)


for _name in MANAGEMENT:
    router.add_api_route(f"/api/{_name}", _management(_name), methods=["DELETE"] if _name == "delete" else ["POST"],
                         include_in_schema=False)


# /api/embed and /api/embeddings: encoder_routes.py


# ---- the answer ----
def _submit(state, req, prompt_ids: list[int], grammar, chat: bool):
    try:
        params = sampling_params(state, req, len(prompt_ids), chat, grammar)  # chat: through the template
    except ApiError as e:
        raise renamed(e) from None
    return submit(state, prompt_ids, [params], chat)


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
    out: dict[str, Any] = {"model": body.model, "created_at": timestamp()}
    if chat:
        out["message"] = ({"role": "assistant", "content": text} | ({"thinking": thinking} if thinking else {})
                          | ({"tool_calls": calls} if calls else {}))
    else:
        out |= {"response": text} | ({"thinking": thinking} if thinking else {})
    return out | {"done": False}


async def _answer(state, request: Request, req, body, prompt_ids, grammar, tools, received: float, chat: bool):
    seq = _submit(state, req, prompt_ids, grammar, isinstance(req, ChatCompletionRequest))
    clock = _Clock(received)
    clock.submitted = time.perf_counter()
    deltas = timed(state, state.engine.stream(seq), received)
    parser = ToolCallParser(*tools) if tools else None
    if body.stream:
        state.metrics.requests.labels(status="200").inc()
        return StreamingResponse(_ndjson(deltas, body, chat, parser, clock), media_type=NDJSON,
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    text, thinking, calls, usage, reason, error = [], [], [], None, None, None
    async with anyio.create_task_group() as tg:
        tg.start_soon(abort_on_disconnect, request, state.engine, seq.request_id)
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
        raise ApiError(500, error)
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
        log.error("ollama stream failed: %s: %s", type(e).__name__, str(e)[:300])
        yield line({"error": "internal server error"})
        return
    yield line(_piece(body, chat, "") | clock.final(usage, reason))
