"""A generating request from submission to its last event, for every route: the engine's refusals
as API errors, the metrics of its tokens, the client leaving (an abort), and OpenAI's server-sent
events (text, reasoning, tool-call deltas, logprobs, usage, [DONE])."""

from __future__ import annotations

import logging
import time
from typing import AsyncIterator

import anyio
from starlette.requests import Request

from ..engine.async_engine import AsyncEngine
from ..engine.errors import ContextLengthError, EngineClosedError, QueueFullError, TooManyChoicesError
from ..engine.request_state import Delta
from ..engine.sampling import SamplingParams
from ..structured.tool_parser import ToolCallParser
from .choices import UsageTotal
from .intake import ApiError
from .logprob_format import LogprobFormatter
from .shaping import ResponseShaper
from .state import RETRY_AFTER_SECONDS, ServerState

log = logging.getLogger("sysinfer.api")


def submit(state: ServerState, prompt_ids: list[int], params: list[SamplingParams], chat: bool):
    """The request queued in the engine (one sequence per choice); the engine's refusals as API errors."""
    try:
        seq = state.engine.submit(prompt_ids, params[0], more_choices=params[1:])
    except ContextLengthError as e:
        raise ApiError(400, str(e), param="messages" if chat else "prompt", code="context_length_exceeded") from None
    except TooManyChoicesError as e:
        raise ApiError(400, str(e), param="n", code="invalid_value") from None
    except QueueFullError as e:
        raise ApiError(429, f"server busy: {e}", "rate_limit_error", code="queue_full", headers={"Retry-After": "2"}) from None
    except EngineClosedError as e:
        raise ApiError(503, str(e), "server_error", code="shutting_down",
                       headers={"Retry-After": RETRY_AFTER_SECONDS}) from None
    state.metrics.prompt_tokens.inc(len(prompt_ids))
    return seq


def tool_finish(finish: str | None, called: bool) -> str | None:
    """A reply that ended by itself after calling tools finishes with "tool_calls", as OpenAI's do."""
    return "tool_calls" if called and finish == "stop" else finish


async def wait_for_admission(request: Request, engine: AsyncEngine, request_id: str, admission) -> None:
    """Until the request leaves the queue (runs, or ends); a client that leaves meanwhile aborts it."""
    if admission.admitted.is_set():
        return
    async with anyio.create_task_group() as tg:
        tg.start_soon(abort_on_disconnect, request, engine, request_id)
        await admission.admitted.wait()
        tg.cancel_scope.cancel()


def refuse_if_shed(admission) -> None:
    if admission.shed:
        raise ApiError(503, "the server is shutting down; the request was not started", "server_error",
                       code="shutting_down", headers={"Retry-After": RETRY_AFTER_SECONDS})


async def abort_on_disconnect(request: Request, engine: AsyncEngine, request_id: str) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            engine.abort_request(request_id)
            return


async def timed(state: ServerState, deltas: AsyncIterator[Delta], received: float) -> AsyncIterator[Delta]:
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


def _tool_events(shaper: ResponseShaper, parser, d: Delta, logprobs, include_usage: bool):
    """The chunks of one delta of a reply that may call tools: its content (what the parser is sure
    is not a call), then tool-call deltas, then the finish. The delta's logprobs ride on the first
    chunk sent for it (an empty one when the parser holds all of its text back for now)."""
    content, calls = parser.feed(d.text, final=bool(d.finish_reason))
    if content:
        yield shaper.chunk(content, with_usage_field=include_usage, index=d.choice, logprobs=logprobs)
        logprobs = None
    if calls:
        yield shaper.tool_chunk(calls, with_usage_field=include_usage, index=d.choice, logprobs=logprobs)
        logprobs = None
    if d.finish_reason or logprobs:
        yield shaper.chunk(None, tool_finish(d.finish_reason, parser.called) if d.finish_reason else None,
                           with_usage_field=include_usage, index=d.choice, logprobs=logprobs)


async def sse(deltas: AsyncIterator[Delta], shaper: ResponseShaper, include_usage: bool, n: int = 1,
               formatters: list[LogprobFormatter] | None = None, stop=None,
               tools: list[ToolCallParser] | None = None) -> AsyncIterator[str]:
    """The stream's events; whatever happens, it ends with a last chunk of each choice (or an error
    event) and [DONE]. The n choices' chunks interleave, each naming its index. formatters: one per
    choice when the request asked for logprobs; stop(): ends the request's other choices after an error;
    tools: one call parser per choice when the reply may call tools (content deltas, then tool-call deltas)."""
    if shaper.chat:
        for index in range(n):
            yield shaper.chunk(None, first=True, with_usage_field=include_usage, index=index)
    total = UsageTotal()
    try:
        async for d in deltas:
            if d.error:
                if stop is not None:
                    stop()
                yield shaper.error_event(d.error, code="generation_failed")
                break
            logprobs = formatters[d.choice].format(d.logprobs) if formatters and d.logprobs else None
            if d.reasoning:  # a thinking model's reasoning, before the answer's text of the same delta
                yield shaper.chunk(None, with_usage_field=include_usage, index=d.choice, reasoning=d.reasoning)
            if tools is not None:
                for event in _tool_events(shaper, tools[d.choice], d, logprobs, include_usage):
                    yield event
                total.add(d)
                continue
            if d.finish_reason:
                total.add(d)
                yield shaper.chunk(d.text, d.finish_reason, with_usage_field=include_usage, index=d.choice,
                                   logprobs=logprobs)
            elif d.text or logprobs:
                yield shaper.chunk(d.text, with_usage_field=include_usage, index=d.choice, logprobs=logprobs)
    except Exception as e:  # noqa: BLE001 - the status line is sent: report in the stream
        log.error("stream failed: %s: %s", type(e).__name__, str(e)[:300])
        yield shaper.error_event("internal server error")
    if include_usage:
        yield shaper.usage_chunk(total.usage())
    yield shaper.DONE
