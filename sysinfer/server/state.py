"""One server's state (config, model, engine, metrics, drain), kept on the app as `app.state.sysinfer`;
route modules reach it from the request with `state_of(request)`."""

from __future__ import annotations

import anyio
from starlette.requests import Request

from ..config import ServerConfig
from .metrics import Metrics

RETRY_AFTER_SECONDS = "5"  # on 503s: loading, draining (a balancer retries elsewhere), stopped


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
        self.encoders: dict = {}         # kind ("embedding", "rerank") -> encoders.ServedEncoder
        self.loaded = False              # every model the config names is loaded (and the engine made, if chat)

    @property
    def ready(self) -> bool:
        """Every model is loaded. `engine` is None after that only when no chat model is served."""
        return self.loaded

    @property
    def serves_chat(self) -> bool:
        return self.config.serves_chat


def state_of(request: Request) -> ServerState:
    return request.app.state.sysinfer
