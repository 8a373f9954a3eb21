"""OpenAI's API: /v1/models, /v1/chat/completions and /v1/completions (also /models and
/chat/completions without /v1, as llama.cpp's server). Each route checks the body (intake.py),
prepares it (preparation.py) and answers whole or as server-sent events (streaming.py)."""

from __future__ import annotations

import functools
import time

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from ..structured.tool_parser import ToolCallParser, whole_calls
from .choices import ChoiceCollector, choice_params
from .intake import ApiError, check_key, guarded, in_thread, parse
from .logprob_format import LogprobFormatter
from .preparation import prepare_chat, prepare_completion, sampling_params
from .service_routes import served_models
from .protocol import ChatCompletionRequest, CommonRequest, CompletionRequest
from .shaping import ResponseShaper, now
from .state import ServerState, state_of
from .streaming import abort_on_disconnect, refuse_if_shed, sse, submit, timed, tool_finish, wait_for_admission

router = APIRouter()


@router.get("/v1/models")
@router.get("/models", include_in_schema=False)
@guarded
async def models(request: Request):
    state = state_of(request)
    check_key(state, request)
    # each with its kind (chat, embedding, rerank): one server may serve all three
    listed = [{"id": m["id"], "object": "model", "created": now(), "owned_by": "sysinfer", "kind": m["kind"]}
              for m in served_models(state)]
    return {"object": "list", "data": listed if state.ready else []}  # none while loading or failed


@router.post("/v1/chat/completions")
@router.post("/chat/completions", include_in_schema=False)
@guarded
async def chat_completions(request: Request):
    state = state_of(request)
    req = await parse(state, request, ChatCompletionRequest)
    prompt_ids, grammar, tools = await in_thread(state, prepare_chat, state.tokenizer, req,
                                                 state.config.reasoning_format == "deepseek")
    return await complete(state, request, req, prompt_ids, chat=True, grammar=grammar, tools=tools)


@router.post("/v1/completions")
@guarded
async def completions(request: Request):
    state = state_of(request)
    req = await parse(state, request, CompletionRequest)
    prompt_ids, grammar = await in_thread(state, prepare_completion, state.tokenizer, req)
    return await complete(state, request, req, prompt_ids, chat=False, grammar=grammar)


async def complete(state: ServerState, request: Request, req: CommonRequest, prompt_ids: list[int], chat: bool,
                   grammar=None, tools=None):
    """`grammar`: the compiled output constraint; `tools`: (syntax, plan) when the reply may call tools."""
    params = choice_params(sampling_params(state, req, len(prompt_ids), chat, grammar), req.n)
    received = time.perf_counter()
    seq = submit(state, prompt_ids, params, chat)
    shaper = ResponseShaper(state.model_name, chat)
    admission = state.engine.admission(seq)
    deltas = timed(state, state.engine.stream(seq), received)
    logprobs = params[0].logprobs is not None
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        # The status line waits while the request is queued: one still queued when the server starts
        # draining gets 503 with Retry-After at once (its client can go elsewhere), not a 200 that
        # ends with "abort" and no content after the whole drain.
        await wait_for_admission(request, state.engine, seq.request_id, admission)
        refuse_if_shed(admission)
        state.metrics.requests.labels(status="200").inc()
        formatters = [LogprobFormatter(state.tokenizer, chat) for _ in params] if logprobs else None
        # Starlette watches for the client leaving while it streams; leaving cancels sse(), which aborts.
        stop = functools.partial(state.engine.abort_request, seq.request_id)
        parsers = [ToolCallParser(*tools) for _ in params] if tools else None
        return StreamingResponse(sse(deltas, shaper, include_usage, len(params), formatters, stop, parsers),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    collected = ChoiceCollector(len(params), state.tokenizer, chat, logprobs)
    async with anyio.create_task_group() as tg:
        # Nobody reads a non-streaming answer whose client left: abort it (even while it waits in the queue).
        tg.start_soon(abort_on_disconnect, request, state.engine, seq.request_id)
        async for d in deltas:
            collected.add(d)
            if d.error:  # one failed choice fails the answer: stop the others now
                state.engine.abort_request(seq.request_id)
                break
        tg.cancel_scope.cancel()
    refuse_if_shed(admission)
    if collected.error:
        raise ApiError(500, collected.error, "server_error", code="generation_failed")
    if "abort" in collected.finish_reasons and await request.is_disconnected():
        state.metrics.requests.labels(status="499").inc()
        return Response(status_code=499)
    state.metrics.requests.labels(status="200").inc()
    choices = collected.choices()
    if tools:
        for c in choices:
            c.text, calls = whole_calls(ToolCallParser(*tools), c.text)
            c.tool_calls, c.finish_reason = calls or None, tool_finish(c.finish_reason, bool(calls))
    return shaper.whole(choices, collected.total.usage())
