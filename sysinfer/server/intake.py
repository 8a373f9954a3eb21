"""What every API route does before its own work, and how it fails: the API key, the body's size and
time limits, JSON and pydantic validation into a request model, refusals while loading or draining,
the CPU work off the event loop, and `ApiError` (an OpenAI error body with its status) with the guard
that turns anything unexpected into a clean 500."""

from __future__ import annotations

import functools
import hmac
import json
import logging

import anyio
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request

from .shaping import error_body
from .state import RETRY_AFTER_SECONDS, ServerState, state_of

log = logging.getLogger("sysinfer.api")


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.body, self.headers = status, error_body(message, type_, param, code), headers


def guarded(route):
    """A route (taking `request`) whose unexpected failures become a clean 500 (no traceback to the
    client, and the keep-alive connection stays open: an exception that escapes to Starlette makes
    uvicorn drop it)."""
    @functools.wraps(route)
    async def wrapped(*args, **kwargs):
        try:
            return await route(*args, **kwargs)
        except ApiError:
            raise
        except ClientDisconnect:  # the client left while sending its body: nobody to answer
            request = kwargs["request"] if "request" in kwargs else args[0]
            state_of(request).metrics.requests.labels(status="499").inc()
            return Response(status_code=499)
        except Exception as e:  # noqa: BLE001
            log.error("internal error in %s: %s: %s", route.__name__, type(e).__name__, str(e)[:300])
            raise ApiError(500, "internal server error", "server_error", code="internal_error") from None
    return wrapped


def check_key(state: ServerState, request: Request) -> None:
    key = state.config.api_key
    if not key:
        return
    given = request.headers.get("authorization", "")
    token = given[7:] if given.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(token.encode(), key.encode()):
        raise ApiError(401, "invalid or missing API key (Authorization: Bearer ...)", "authentication_error",
                       code="invalid_api_key")


async def read_body(state: ServerState, request: Request) -> bytes:
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


async def in_thread(state: ServerState, fn, *args):
    """CPU work of one request (JSON, templates, tokenizing) off the event loop, so a huge body never
    stalls the streams; its own small limiter, so it can't take the engine's thread."""
    return await anyio.to_thread.run_sync(fn, *args, limiter=state.prepare_limiter)


async def parse(state: ServerState, request: Request, kind):
    """The request's body as the pydantic model `kind`, after the key, readiness, drain and size checks."""
    check_key(state, request)
    if state.ready and state.engine is None:  # started with encoders only
        raise ApiError(404, "this server serves no chat model (it was started with only "
                            f"{' and '.join(k + ' models' for k in state.encoders) or 'encoder models'}; "
                            "give a chat model's GGUF to `sysinfer serve`)", code="model_not_found")
    if not state.ready or state.engine.failure:
        raise ApiError(503, _not_ready_message(state), "server_error", code="model_not_ready",
                       headers={"Retry-After": RETRY_AFTER_SECONDS})
    _refuse_while_draining(state)
    body = await read_body(state, request)
    return await in_thread(state, validate, kind, body)


def _refuse_while_draining(state: ServerState) -> None:
    """SIGTERM received: new requests are refused at once (before their body is read), with
    Retry-After, so clients and balancers try another replica or come back after the restart."""
    if state.draining:
        raise ApiError(503, "the server is shutting down", "server_error", code="shutting_down",
                       headers={"Retry-After": RETRY_AFTER_SECONDS})


def _not_ready_message(state: ServerState) -> str:
    if state.load_error:
        return f"the model failed to load: {state.load_error}"
    if not state.ready:
        return "the model is still loading"
    return "the engine has stopped after an internal error"


def validate(kind, body: bytes):
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
