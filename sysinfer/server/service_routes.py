"""The routes that serve no model output: the chat page, /health, /metrics and the OpenAPI schema.
/, /health and /metrics are open (no key): the page asks for the key its calls need, and load
balancers, supervisors and Prometheus probe the others. GET and HEAD on them: balancers probe with
HEAD (uvicorn sends HEAD's headers without the body)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from .intake import check_key, guarded
from .state import RETRY_AFTER_SECONDS, state_of
from .web import chat_page

router = APIRouter()
router.add_api_route("/", chat_page, methods=["GET", "HEAD"], include_in_schema=False)


@router.api_route("/health", methods=["GET", "HEAD"])
async def health(request: Request):
    """200 only while requests can be served."""
    state = state_of(request)
    if state.load_error:
        return JSONResponse({"status": "error", "error": state.load_error}, status_code=503)
    if not state.ready:
        return JSONResponse({"status": "loading"}, status_code=503)
    engine = state.engine  # None when only encoders are served
    if engine is not None and engine.failure:
        return JSONResponse({"status": "error", "error": f"engine stopped: {engine.failure}"},
                            status_code=503)
    if state.draining:
        return JSONResponse({"status": "shutting_down"}, status_code=503,
                            headers={"Retry-After": RETRY_AFTER_SECONDS})
    lanes = len(getattr(engine.core, "lanes", ())) or 1 if engine is not None else 1  # --numa replicate: one per node
    answer = {"status": "ok", "model": state.model_name if engine is not None else None}
    if state.encoders:  # each served model with its kind (the chat model first)
        answer["models"] = served_models(state)
    return answer | ({"lanes": lanes} if lanes > 1 else {})


def served_models(state) -> list[dict]:
    """[{"id", "kind"}] of every model the server answers with: chat, embedding, rerank."""
    chat = [{"id": state.model_name, "kind": "chat"}] if state.engine is not None else []
    return chat + [{"id": e.name, "kind": e.kind} for e in state.encoders.values()]


@router.api_route("/metrics", methods=["GET", "HEAD"])
async def metrics(request: Request):
    """As Prometheus scrapes it: counts and gauges only, no request content."""
    state = state_of(request)
    if state.ready and state.engine is not None:
        state.metrics.observe_engine(state.engine.snapshot())
        state.metrics.observe_lanes(state.engine.lane_snapshots())
        state.metrics.observe_phases(state.engine.phase_seconds)
    return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")


@router.get("/openapi.json", include_in_schema=False)
@guarded
async def openapi(request: Request):
    check_key(state_of(request), request)
    return JSONResponse(request.app.openapi())
