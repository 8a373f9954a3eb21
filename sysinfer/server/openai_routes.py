"""The OpenAI-compatible HTTP server: `uvicorn sysinfer.api:app` (configured from SYSINFER_* env) or
`sysinfer serve`. The model loads in the background at start-up; /health says 503 until it is ready.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import signal
import sys
import time
from contextlib import asynccontextmanager, contextmanager
from typing import AsyncIterator

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from . import ollama_api
from .config import ServerConfig
from .engine.async_engine import AsyncEngine
from .engine.request_state import Delta
from .engine.errors import ContextLengthError, EngineClosedError, QueueFullError, TooManyChoicesError
from .choices import ChoiceCollector, UsageTotal, choice_params
from .engine.sampling import SamplingParams
from .logprob_format import LogprobFormatter
from .metrics import Metrics
from .model.chat_template import ChatTemplateError
from .protocol import ChatCompletionRequest, CommonRequest, CompletionRequest, ResponseShaper, error_body, now
from .structured import tools as tool_calls
from .structured.constraints import Constraint, ConstraintError, compile_constraint, from_request, json_schema_grammar
from .web import chat_page, page_url

log = logging.getLogger("sysinfer.api")
RETRY_AFTER_SECONDS = "5"  # on 503s: loading, draining (a balancer retries elsewhere), stopped


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.body, self.headers = status, error_body(message, type_, param, code), headers


class ServerState:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.model = self.tokenizer = self.engine = self.draft = None
        self.model_name = config.model_name or "sysinfer"
        self.load_error: str | None = None
        self.on_load_error = None        # set by `sysinfer serve`: stop the server (the CLI exits non-zero)
        self.address_known = True        # config's host/port are where uvicorn listens (see create_app)
        self.metrics = Metrics()
        self.draining = False            # SIGTERM received: finishing what runs, refusing new requests
        self.drain_cut = 0               # requests the drain had to end before they finished
        self.prepare_limiter = anyio.CapacityLimiter(2)  # threads parsing / templating / tokenizing requests

    @property
    def ready(self) -> bool:
        return self.engine is not None


def _load(state: ServerState) -> None:
    """Runs in a worker thread: validate and load the model, build tokenizer and engine."""
    from .startup import load_serving_model

    loaded = load_serving_model(state.config)
    state.tokenizer, state.model, state.model_name = loaded.tokenizer, loaded.model, loaded.name
    state.draft = loaded.draft


def _draft_note(draft) -> str:
    return f"; drafts from {draft.path.rsplit('/', 1)[-1]}, {draft.n_kv_blocks} KV blocks" if draft else ""


async def _load_and_run(state: ServerState) -> None:
    try:
        await anyio.to_thread.run_sync(_load, state)
    except Exception as e:  # reported by /health; the process stays up to say why
        state.load_error = f"{type(e).__name__}: {str(e)[:1000]}"
        print(f"sysinfer: model failed to load: {state.load_error}", flush=True)
        if state.on_load_error is not None:
            state.on_load_error()
        return
    cfg = state.config
    state.engine = AsyncEngine(state.model, state.tokenizer, cfg.engine_config(), draft_model=state.draft)
    # The address is known only when sysinfer's CLI started uvicorn with this config; `uvicorn
    # sysinfer.api:app --port N` binds where its own flags say (its "Uvicorn running on" line).
    where = (f"on port {cfg.port}; chat page: {page_url(cfg.host, cfg.port)}" if state.address_known
             else "; chat page: / on the address uvicorn listens on")
    print(f"sysinfer: serving {state.model_name} ({state.model.kernels} kernels, {state.model.n_threads} threads, "
          f"{state.model.n_kv_blocks} KV blocks{_draft_note(state.draft)}) {where}", flush=True)
    await state.engine.run()


def create_app(config: ServerConfig | None = None) -> FastAPI:
    """`config`: given by the CLI, which binds uvicorn to its host and port; None: from SYSINFER_*
    (the module-level `app`, whose address is whatever uvicorn's own flags say)."""
    state = ServerState(config or ServerConfig.from_env())
    state.address_known = config is not None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_load_and_run, state)
            tg.start_soon(_drain_on_signals, state)
            try:
                yield
            finally:
                if state.engine is not None:
                    with anyio.move_on_after(state.config.drain_seconds + 2):
                        state.drain_cut += await state.engine.drain(0)
                tg.cancel_scope.cancel()

    app = FastAPI(title="sysinfer", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sysinfer = state

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        state.metrics.requests.labels(status=str(exc.status)).inc()
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(404)
    async def not_found(request: Request, exc):
        return JSONResponse(error_body(f"no route {request.url.path[:200]}", code="not_found"), status_code=404)

    @app.exception_handler(405)
    async def bad_method(request: Request, exc):
        return JSONResponse(error_body(f"{request.method} is not allowed on {request.url.path[:200]}",
                                       code="method_not_allowed"), status_code=405)

    # Open (no key): the page asks for the key its calls need. GET and HEAD on the open routes: load
    # balancers probe with HEAD (uvicorn sends HEAD's headers without the body).
    app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)(chat_page)

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health():
        """Open (no key): load balancers and supervisors probe it. 200 only while requests can be served."""
        if state.load_error:
            return JSONResponse({"status": "error", "error": state.load_error}, status_code=503)
        if not state.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        if state.engine.failure:
            return JSONResponse({"status": "error", "error": f"engine stopped: {state.engine.failure}"},
                                status_code=503)
        if state.draining:
            return JSONResponse({"status": "shutting_down"}, status_code=503,
                                headers={"Retry-After": RETRY_AFTER_SECONDS})
        lanes = len(getattr(state.engine.core, "lanes", ())) or 1  # --numa replicate: one per node
        return {"status": "ok", "model": state.model_name} | ({"lanes": lanes} if lanes > 1 else {})

    @app.api_route("/metrics", methods=["GET", "HEAD"])
    async def metrics():
        """Open (no key), as Prometheus scrapes it: counts and gauges only, no request content."""
        if state.ready:
            state.metrics.observe_engine(state.engine.snapshot())
            state.metrics.observe_lanes(state.engine.lane_snapshots())
            state.metrics.observe_phases(state.engine.phase_seconds)
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/openapi.json", include_in_schema=False)
    @_guarded(state)
    async def openapi(request: Request):
        _check_key(state, request)
        return JSONResponse(app.openapi())

    @app.get("/v1/models")
    @app.get("/models", include_in_schema=False)  # also without /v1, as llama.cpp's server
    @_guarded(state)
    async def models(request: Request):
        _check_key(state, request)
        listed = [{"id": state.model_name, "object": "model", "created": now(), "owned_by": "sysinfer"}]
        return {"object": "list", "data": listed if state.ready else []}  # none while loading or failed

    @app.post("/v1/chat/completions")
    @app.post("/chat/completions", include_in_schema=False)
    @_guarded(state)
    async def chat_completions(request: Request):
        req = await _parse(state, request, ChatCompletionRequest)
        prompt_ids, grammar, tools = await _in_thread(state, _prepare_chat, state.tokenizer, req)
        return await _complete(state, request, req, prompt_ids, chat=True, grammar=grammar, tools=tools)

    @app.post("/v1/completions")
    @_guarded(state)
    async def completions(request: Request):
        req = await _parse(state, request, CompletionRequest)
        tok = state.tokenizer

        def prepare():
            if req.tools is not None or req.tool_choice is not None:
                raise ApiError(400, "tools are supported on /v1/chat/completions only", param="tools",
                               code="unsupported_parameter")
            return tok.encode(req.prompt, add_bos=tok.add_bos), _output_grammar(tok, req)

        prompt_ids, grammar = await _in_thread(state, prepare)
        return await _complete(state, request, req, prompt_ids, chat=False, grammar=grammar)

    ollama_api.add_routes(app, state, sys.modules[__name__])  # Ollama's /api/* on the same preparation
    return app


def _guarded(state: ServerState):
    """A route whose unexpected failures become a clean 500 (no traceback to the client, and the
    keep-alive connection stays open: an exception that escapes to Starlette makes uvicorn drop it)."""
    def wrap(route):
        @functools.wraps(route)
        async def guarded(*args, **kwargs):
            try:
                return await route(*args, **kwargs)
            except ApiError:
                raise
            except ClientDisconnect:  # the client left while sending its body: nobody to answer
                state.metrics.requests.labels(status="499").inc()
                return Response(status_code=499)
            except Exception as e:  # noqa: BLE001
                log.error("internal error in %s: %s: %s", route.__name__, type(e).__name__, str(e)[:300])
                raise ApiError(500, "internal server error", "server_error", code="internal_error") from None
        return guarded
    return wrap


async def _drain_on_signals(state: ServerState) -> None:
    """On SIGTERM/SIGINT, drain first, then let the server's own handler run.

    While draining, the server still listens: /health answers 503 "shutting_down" (balancers and
    readiness probes take the replica out), new requests get 503 with Retry-After, so do the ones
    still queued (at once), and running requests get drain_seconds (SYSINFER_DRAIN_SECONDS) to
    finish, then end with finish_reason "abort" and [DONE]. Then the signal goes to uvicorn's
    handler, which finds no stream left to cut. A second signal cuts the drain short (the running
    requests end now, properly) and the server still answers 503 until they have; a third stops at
    once. `state.drain_cut` counts the requests the drain had to end (`sysinfer serve` exits 3)."""
    import asyncio

    loop, requested, cut = asyncio.get_running_loop(), anyio.Event(), anyio.Event()
    received: list[int] = []
    previous_handlers = {}

    def handler(signum, frame):
        received.append(signum)
        if len(received) == 1:
            loop.call_soon_threadsafe(requested.set)
        elif len(received) == 2:  # asked twice: end the running requests now, then stop
            loop.call_soon_threadsafe(cut.set)
        else:  # three times: stop now
            _pass_signal_on(signum, previous_handlers)

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous_handlers[sig] = signal.getsignal(sig)
            signal.signal(sig, handler)
        except ValueError:  # not the main thread (an embedding app): no graceful drain
            return
    await requested.wait()
    state.draining = True
    if state.engine is not None:
        state.drain_cut = await state.engine.drain(state.config.drain_seconds, cut)
    _pass_signal_on(received[0], previous_handlers)


EXIT_DRAIN_CUT = 3  # `sysinfer serve`'s exit status when the drain had to end running requests


def exit_status(state: ServerState) -> int:
    """`sysinfer serve`'s status after a drain: 0 when every request finished (SIGTERM or SIGINT
    alike), EXIT_DRAIN_CUT when the drain had to end running ones."""
    return EXIT_DRAIN_CUT if state.drain_cut else 0


@contextmanager
def exit_status_on_signals():
    """Around uvicorn's run in `sysinfer serve`: uvicorn puts back the handlers it found and raises
    the signal it caught again once it has shut down. With Python's defaults SIGTERM then ended the
    process by the signal (-15 to a parent) and SIGINT with 0; handlers that do nothing let the CLI
    return exit_status() instead."""
    quiet = {sig: signal.signal(sig, lambda signum, frame: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, previous in quiet.items():
            signal.signal(sig, previous)


def _pass_signal_on(signum: int, previous_handlers: dict) -> None:
    """Put the handlers that were there before back and send the signal again: uvicorn's handler
    (or Python's default) does what it would have done at first."""
    for sig, previous in previous_handlers.items():
        signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
    signal.raise_signal(signum)


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
    with anyio.move_on_after(state.config.body_timeout) as waited:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, f"request body over {limit} bytes", code="request_too_large")
    if waited.cancelled_caught:  # headers sent, then the body never (fully) came
        raise ApiError(408, f"request body not received within {state.config.body_timeout:g} s",
                       code="request_timeout", headers={"Connection": "close"})
    return bytes(body)


async def _in_thread(state: ServerState, fn, *args):
    """CPU work of one request (JSON, templates, tokenizing) off the event loop, so a huge body never
    stalls the streams; its own small limiter, so it can't take the engine's thread."""
    return await anyio.to_thread.run_sync(fn, *args, limiter=state.prepare_limiter)


async def _parse(state: ServerState, request: Request, kind):
    _check_key(state, request)
    if not state.ready or state.engine.failure:
        raise ApiError(503, _not_ready_message(state), "server_error", code="model_not_ready",
                       headers={"Retry-After": RETRY_AFTER_SECONDS})
    _refuse_while_draining(state)
    body = await _read_body(state, request)
    return await _in_thread(state, _validate, kind, body)


def _refuse_while_draining(state: ServerState) -> None:
    """SIGTERM received: new requests are refused at once (before their body is read), with
    Retry-After, so clients and balancers try another replica or come back after the restart."""
    if state.draining:
        raise ApiError(503, "the server is shutting down", "server_error", code="shutting_down",
                       headers={"Retry-After": RETRY_AFTER_SECONDS})


def _not_ready_message(state: ServerState) -> str:
    if state.load_error:
        return f"the model failed to load: {state.load_error}"
    if state.engine is None:
        return "the model is still loading"
    return "the engine has stopped after an internal error"


def _validate(kind, body: bytes):
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, and ints past Python's digit limit
        raise ApiError(400, f"request body is not valid JSON: {str(e)[:200]}", code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_json")
    try:
        return kind.model_validate(data)
    except ValidationError as e:
        err = e.errors(include_url=False, include_input=False)[0]
        param = ".".join(str(p) for p in err["loc"])[:200] or None
        raise ApiError(400, f"{param}: {err['msg']}" if param else err["msg"], param=param,
                       code=_error_code(err["type"])) from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply", code="invalid_json") from None


def _error_code(pydantic_type: str) -> str:
    """OpenAI's codes for a refused field: missing, of the wrong JSON type, or a value out of range."""
    if pydantic_type == "missing":
        return "missing_required_parameter"
    if pydantic_type.endswith(("_type", "_parsing")) or pydantic_type in ("model_attributes_type", "is_instance_of"):
        return "invalid_type"
    return "invalid_value"  # bounds, lengths, literals (a role we don't know), our own validators


def _chat_prompt_ids(tokenizer, messages: list[dict], tools: list | None = None, variables=None) -> list[int]:
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, variables=variables)
    except ChatTemplateError as e:
        raise ApiError(400, str(e)[:500], param="messages", code="invalid_value") from None


def _constraint_error(e: ConstraintError) -> ApiError:
    return ApiError(400, str(e), param=e.param, code=e.code)


def _output_grammar(tokenizer, req: CommonRequest):
    """The compiled matcher of the request's response_format / guided_* constraint (None: free text)."""
    try:
        constraint = from_request(req.response_format, req.guided_json, req.guided_regex, req.guided_choice,
                                  req.guided_grammar)
        return compile_constraint(tokenizer, constraint) if constraint is not None else None
    except ConstraintError as e:
        raise _constraint_error(e) from None


def _prepare_chat(tokenizer, req: ChatCompletionRequest):
    """(prompt ids, compiled grammar or None, (tool syntax, tool plan) or None) of a chat request.
    Tools pick the call syntax from the model's template (templates that render `tools` get
    Llama 3.1-style JSON calls, the others our generic <tool_call> format) and constrain the reply."""
    try:
        plan = tool_calls.plan_from_request(req.tools, req.tool_choice, req.parallel_tool_calls)
    except ConstraintError as e:
        raise _constraint_error(e) from None
    grammar = _output_grammar(tokenizer, req)
    if plan is not None and grammar is not None:
        raise ApiError(400, "tools and an output constraint (response_format / guided_*) can't be combined unless "
                       'tool_choice is "none"', param="tool_choice", code="invalid_constraint")
    messages = [m.as_template_message() for m in req.messages]
    has_tool_turns = any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
    syntax = None
    if plan is not None or has_tool_turns:
        syntax = tool_calls.choose_syntax(tokenizer)
        messages, template_tools = tool_calls.prepare_messages(syntax, messages, plan)
    else:
        template_tools = None
    prompt_ids = _chat_prompt_ids(tokenizer, messages, template_tools, req.template_variables())
    if plan is None:
        return prompt_ids, grammar, None
    try:
        grammar = compile_constraint(tokenizer, tool_calls.tool_grammar(syntax, plan))
    except ConstraintError as e:
        raise _constraint_error(_blame_tool(tokenizer, plan) or e) from None
    return prompt_ids, grammar, (syntax, plan)


def _blame_tool(tokenizer, plan) -> ConstraintError | None:
    """The refusal of the first allowed function whose parameters can't be enforced on their own,
    naming it (`tools[2].function.parameters`) with references as the client wrote them; None if
    each compiles alone (the calls' grammar as a whole failed)."""
    allowed = {f.name for f in plan.allowed}
    for i, f in enumerate(plan.functions):
        if f.name not in allowed:
            continue
        where = f"tools[{i}].function.parameters"
        try:
            schema = json_schema_grammar(tool_calls.closed_objects(f.parameters), where)
            compile_constraint(tokenizer, Constraint(schema, "tools", where))
        except ConstraintError as e:
            return e
    return None


def _sampling(state: ServerState, req: CommonRequest, n_prompt: int, chat: bool, grammar=None) -> SamplingParams:
    asked = (getattr(req, "max_completion_tokens", None) if chat else None) or req.max_tokens
    if asked is None:  # the server's default, cut to what the context and the KV cache can still hold
        room = state.engine.max_total_tokens - n_prompt
        if room < 1:
            raise ApiError(400, f"the prompt has {n_prompt} tokens; at most {state.engine.max_total_tokens - 1} "
                           "fit this server's context", param="messages" if chat else "prompt",
                           code="context_length_exceeded")
        asked = min(state.config.max_tokens, room)
    vocab = state.tokenizer.vocab_size
    for token in req.logit_bias or {}:
        if token >= vocab:
            raise ApiError(400, f"logit_bias: token id {token} is not in this model's vocabulary (0..{vocab - 1})",
                           param="logit_bias", code="invalid_value")
    try:
        return SamplingParams(
            temperature=state.config.temperature if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p, top_k=req.top_k or 0, min_p=req.min_p or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0, presence_penalty=req.presence_penalty or 0.0,
            repetition_penalty=req.repetition_penalty or 1.0, seed=req.seed, max_tokens=asked, stop=req.stop or [],
            logprobs=req.top_logprobs_asked(), logit_bias=req.logit_bias or {}, grammar=grammar,
            ignore_eos=req.ignore_eos, reasoning=chat and state.config.reasoning_format == "deepseek",
            reasoning_budget=_reasoning_budget(state, req))
    except ValueError as e:  # "<field> must be ...": the field is the first word
        raise ApiError(400, str(e), param=str(e).split(" ", 1)[0], code="invalid_value") from None


def _reasoning_budget(state: ServerState, req: CommonRequest) -> int | None:
    """The request's thinking_budget, else the server's --reasoning-budget (None: no limit)."""
    asked = getattr(req, "thinking_budget", None)
    if asked is not None:
        return asked
    return state.config.reasoning_budget if state.config.reasoning_budget >= 0 else None


async def _complete(state: ServerState, request: Request, req: CommonRequest, prompt_ids: list[int], chat: bool,
                    grammar=None, tools=None):
    """`grammar`: the compiled output constraint; `tools`: (syntax, plan) when the reply may call tools."""
    params = choice_params(_sampling(state, req, len(prompt_ids), chat, grammar), req.n)
    received = time.perf_counter()
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
    shaper = ResponseShaper(state.model_name, chat)
    admission = state.engine.admission(seq)
    deltas = _timed(state, state.engine.stream(seq), received)
    logprobs = params[0].logprobs is not None
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        # The status line waits while the request is queued: one still queued when the server starts
        # draining gets 503 with Retry-After at once (its client can go elsewhere), not a 200 that
        # ends with "abort" and no content after the whole drain.
        await _wait_for_admission(request, state.engine, seq.request_id, admission)
        _refuse_if_shed(admission)
        state.metrics.requests.labels(status="200").inc()
        formatters = [LogprobFormatter(state.tokenizer, chat) for _ in params] if logprobs else None
        # Starlette watches for the client leaving while it streams; leaving cancels _sse, which aborts.
        stop = functools.partial(state.engine.abort_request, seq.request_id)
        parsers = [tool_calls.ToolCallParser(*tools) for _ in params] if tools else None
        return StreamingResponse(_sse(deltas, shaper, include_usage, len(params), formatters, stop, parsers),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    collected = ChoiceCollector(len(params), state.tokenizer, chat, logprobs)
    async with anyio.create_task_group() as tg:
        # Nobody reads a non-streaming answer whose client left: abort it (even while it waits in the queue).
        tg.start_soon(_abort_on_disconnect, request, state.engine, seq.request_id)
        async for d in deltas:
            collected.add(d)
            if d.error:  # one failed choice fails the answer: stop the others now
                state.engine.abort_request(seq.request_id)
                break
        tg.cancel_scope.cancel()
    _refuse_if_shed(admission)
    if collected.error:
        raise ApiError(500, collected.error, "server_error", code="generation_failed")
    if "abort" in collected.finish_reasons and await request.is_disconnected():
        state.metrics.requests.labels(status="499").inc()
        return Response(status_code=499)
    state.metrics.requests.labels(status="200").inc()
    choices = collected.choices()
    if tools:
        for c in choices:
            c.text, calls = tool_calls.whole_calls(tool_calls.ToolCallParser(*tools), c.text)
            c.tool_calls, c.finish_reason = calls or None, _tool_finish(c.finish_reason, bool(calls))
    return shaper.whole(choices, collected.total.usage())


def _tool_finish(finish: str | None, called: bool) -> str | None:
    """A reply that ended by itself after calling tools finishes with "tool_calls", as OpenAI's do."""
    return "tool_calls" if called and finish == "stop" else finish


async def _wait_for_admission(request: Request, engine: AsyncEngine, request_id: str, admission) -> None:
    """Until the request leaves the queue (runs, or ends); a client that leaves meanwhile aborts it."""
    if admission.admitted.is_set():
        return
    async with anyio.create_task_group() as tg:
        tg.start_soon(_abort_on_disconnect, request, engine, request_id)
        await admission.admitted.wait()
        tg.cancel_scope.cancel()


def _refuse_if_shed(admission) -> None:
    if admission.shed:
        raise ApiError(503, "the server is shutting down; the request was not started", "server_error",
                       code="shutting_down", headers={"Retry-After": RETRY_AFTER_SECONDS})


async def _abort_on_disconnect(request: Request, engine: AsyncEngine, request_id: str) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            engine.abort_request(request_id)
            return


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
        yield shaper.chunk(None, _tool_finish(d.finish_reason, parser.called) if d.finish_reason else None,
                           with_usage_field=include_usage, index=d.choice, logprobs=logprobs)


async def _sse(deltas: AsyncIterator[Delta], shaper: ResponseShaper, include_usage: bool, n: int = 1,
               formatters: list[LogprobFormatter] | None = None, stop=None,
               tools: "list[tool_calls.ToolCallParser] | None" = None) -> AsyncIterator[str]:
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
