"""The HTTP server: OpenAI's API and Ollama's on one FastAPI app (app.py; `uvicorn sysinfer.api:app`).

The modules, by job:
- app.py: the app, its error handlers and its route modules (ROUTERS); state.py: one server's state;
  lifecycle.py: the model's load, the engine's run, the drain on signals, `sysinfer serve`'s exit status.
- intake.py: what every route does first (API key, body limits, JSON into a request model, refusals
  while loading or draining) and ApiError; protocol.py: OpenAI's request models.
- preparation.py: template, grammar and sampling parameters; streaming.py: submission, disconnects,
  OpenAI's server-sent events; shaping.py, choices.py, logprob_format.py: the answers' shapes.
- Route modules, each an APIRouter: service_routes.py (/, /health, /metrics), openai_routes.py,
  ollama_routes.py (with ollama_shapes.py: Ollama's bodies as the OpenAI requests they mean).
- connections.py (uvicorn's protocol with connection limits), metrics.py, web/ (the chat page).

A new API is a route module: a `router = APIRouter()` whose routes take `request: Request`, find the
server with `state_of(request)`, check and parse with intake.py, prepare with preparation.py, submit
and stream with streaming.py; then add its router to app.ROUTERS."""
