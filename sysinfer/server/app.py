"""The FastAPI app: `create_app(config)` for `sysinfer serve`, and `sysinfer.api:app` (from SYSINFER_*)
for `uvicorn sysinfer.api:app`. It holds the server's state and life (lifecycle.py), the error
handlers, and the route modules: each is an APIRouter, included in ROUTERS' order (the first route
that matches a path and method answers)."""

from __future__ import annotations

from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ..config import ServerConfig
from . import encoder_routes, ollama_routes, openai_routes, service_routes
from .intake import ApiError
from .lifecycle import drain_on_signals, load_and_run
from .shaping import error_body
from .state import ServerState

# The route modules. A new API (embeddings, rerank) is a module with a `router` of its own, added here.
ROUTERS = (service_routes.router, openai_routes.router, encoder_routes.router, ollama_routes.router)


def create_app(config: ServerConfig | None = None) -> FastAPI:
    """`config`: given by the CLI, which binds uvicorn to its host and port; None: from SYSINFER_*
    (the module-level `app`, whose address is whatever uvicorn's own flags say)."""
    state = ServerState(config or ServerConfig.from_env())
    state.address_known = config is not None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with anyio.create_task_group() as tg:
            tg.start_soon(load_and_run, state)
            tg.start_soon(drain_on_signals, state)
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

    for router in ROUTERS:
        app.include_router(router)
    return app
