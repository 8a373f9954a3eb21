"""The encoder APIs (issue 26, and 27's embedding routes): OpenAI's /v1/embeddings (also /embeddings),
TEI's /embed, rerank at /v1/rerank and /rerank (Jina/Cohere's shape; TEI's when the body says `texts`),
and Ollama's /api/embed and /api/embeddings. Each checks the body (embedding_protocol.py), tokenizes in
a worker thread, fits every input to the model's context (cut when the request says truncate, else a
400 naming the input), and hands the batch to the model's EncoderRunner, which runs it in bounded slices
between the chat engine's steps."""

from __future__ import annotations

import functools
import hashlib
import os
import time

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .embedding_protocol import (EmbeddingRequest, clean, InputError, OllamaEmbeddingsRequest, OllamaEmbedRequest,
                                 RerankRequest, TeiEmbedRequest, check_ids, cut_dimensions, embedding_inputs, fit,
                                 l2_normalize, ollama_embed_answer, openai_embeddings, rerank_answer,
                                 rerank_documents, rerank_results, tei_rerank_results)
from .encoders import ServedEncoder
from .ollama_shapes import timestamp
from .intake import ApiError, check_key, guarded, in_thread, read_body, validate
from .state import RETRY_AFTER_SECONDS, ServerState, state_of

router = APIRouter()
FLAG = {"embedding": "--embedding-model", "rerank": "--rerank-model"}


def _api_error(e: InputError) -> ApiError:
    return ApiError(e.status, e.message, param=e.param, code=e.code)


async def _intake(request: Request, kind: str, body_kind) -> tuple[ServerState, ServedEncoder, object]:
    """The key, the encoder of `kind` (404 when none is served, 503 while loading or draining), the body."""
    state = state_of(request)
    check_key(state, request)
    if state.load_error:
        raise ApiError(503, f"the model failed to load: {state.load_error}", "server_error", code="model_not_ready",
                       headers={"Retry-After": RETRY_AFTER_SECONDS})
    if not state.ready:
        raise ApiError(503, "the model is still loading", "server_error", code="model_not_ready",
                       headers={"Retry-After": RETRY_AFTER_SECONDS})
    enc = state.encoders.get(kind)
    if enc is None:
        raise ApiError(404, f"this server serves no {kind} model (start it with {FLAG[kind]} FILE.gguf)",
                       code="model_not_found")
    if state.draining:
        raise ApiError(503, "the server is shutting down", "server_error", code="shutting_down",
                       headers={"Retry-After": RETRY_AFTER_SECONDS})
    body = await read_body(state, request)
    return state, enc, await in_thread(state, validate, body_kind, body)


def _tokenized(enc: ServedEncoder, texts, ids, truncate: bool, field: str, left: bool = False) -> list[list[int]]:
    """Runs in a worker thread: each input's ids, fitted to the context."""
    model = enc.model
    if ids is not None:
        check_ids(ids, getattr(model, "n_vocab", None), field)
        rows = ids
    else:
        rows = [model.tokenize(clean(t)) for t in texts]
    return [fit(row, model.n_ctx, truncate, f"{field}[{i}]", left) for i, row in enumerate(rows)]


class ClientGone(Exception):
    """The client left while its inputs ran: the rest of them were not run."""


async def _unless_gone(request: Request, work):
    """await work(), but a client that leaves ends it at the next slice (the slice running finishes: a
    native call can't be cut), so a timed-out 2,048-input request stops taking the cores."""
    result, gone = None, False
    async with anyio.create_task_group() as tg:
        async def watch():
            nonlocal gone
            while (await request.receive())["type"] != "http.disconnect":
                pass
            gone = True
            tg.cancel_scope.cancel()
        tg.start_soon(watch)
        result = await work()
        tg.cancel_scope.cancel()
    if gone:
        raise ClientGone()
    return result


async def _embed(request: Request, state: ServerState, enc: ServedEncoder, rows: list[list[int]], normalize: bool):
    vectors = await _unless_gone(request, lambda: enc.runner.embed(rows, normalize)) if rows else _empty(enc)
    _count(state, enc, rows)
    return vectors


def _empty(enc: ServedEncoder):
    import numpy as np
    return np.zeros((0, enc.model.dim), np.float32)


def _count(state: ServerState, enc: ServedEncoder, rows: list[list[int]]) -> None:
    state.metrics.encoder_requests.labels(kind=enc.kind).inc()
    state.metrics.encoder_tokens.labels(kind=enc.kind).inc(sum(len(r) for r in rows))


def _checked(fn):
    """InputError (a refused body) -> ApiError; unexpected failures -> a clean 500 (intake.guarded)."""
    @functools.wraps(fn)
    async def wrapped(request: Request):
        try:
            return await fn(request)
        except InputError as e:
            raise _api_error(e) from None
        except ClientGone:  # nobody to answer
            state_of(request).metrics.requests.labels(status="499").inc()
            return Response(status_code=499)
    return guarded(wrapped)


@router.post("/v1/embeddings")
@router.post("/embeddings", include_in_schema=False)  # also without /v1, as llama.cpp's server
@_checked
async def embeddings(request: Request):
    state, enc, req = await _intake(request, "embedding", EmbeddingRequest)
    inputs = embedding_inputs(req.input, "input")
    rows = await in_thread(state, _tokenized, enc, inputs.texts, inputs.ids, req.truncate, "input")
    vectors = cut_dimensions(await _embed(request, state, enc, rows, True), req.dimensions, enc.model.dim, True)
    state.metrics.requests.labels(status="200").inc()
    return _json(openai_embeddings(vectors, enc.name, sum(map(len, rows)), req.encoding_format))


@router.post("/embed")
@_checked
async def tei_embed(request: Request):
    """TEI's: `inputs` a string or strings, answered [[...], ...]. An empty string gets a vector, as TEI."""
    state, enc, req = await _intake(request, "embedding", TeiEmbedRequest)
    inputs = embedding_inputs(req.inputs, "inputs", allow_ids=False, allow_empty_text=True)
    rows = await in_thread(state, _tokenized, enc, inputs.texts, None, req.truncate, "inputs",
                           req.truncation_direction.lower() == "left")
    vectors = cut_dimensions(await _embed(request, state, enc, rows, req.normalize), req.dimensions, enc.model.dim,
                             req.normalize)
    state.metrics.requests.labels(status="200").inc()
    return _json(vectors.tolist())


@router.post("/v1/rerank")
@router.post("/rerank")
@_checked
async def rerank(request: Request):
    state, enc, req = await _intake(request, "rerank", RerankRequest)
    query, docs, tei = rerank_documents(req)
    query, docs = clean(query), [clean(d) for d in docs]  # the answer may quote the documents
    field = "texts" if tei else "documents"
    model = enc.model
    rows = await in_thread(state, lambda: [fit(model.tokenize_pair(query, d), model.n_ctx, req.truncate, f"{field}[{i}]")
                                           for i, d in enumerate(docs)])
    scores = await _unless_gone(request, lambda: enc.runner.rerank(rows))
    _count(state, enc, rows)
    state.metrics.requests.labels(status="200").inc()
    if tei:
        return _json(tei_rerank_results(scores, docs, req.top_n, req.raw_scores, req.return_text))
    return _json(rerank_answer(rerank_results(scores, docs, req.top_n, req.return_documents), enc.name,
                               sum(map(len, rows))))


# ---- Ollama's (its error shape, its model names) ----
def _ollama(fn):
    checked = _checked(fn)

    @functools.wraps(fn)
    async def wrapped(request: Request):
        try:
            return await checked(request)
        except ApiError as e:
            state_of(request).metrics.requests.labels(status=str(e.status)).inc()
            return JSONResponse({"error": e.body["error"]["message"]}, status_code=e.status, headers=e.headers)
    return wrapped


def ollama_names(name: str) -> tuple[str, str]:
    """(name as Ollama lists it, without its tag): `all-MiniLM-L6-v2` is listed as `all-MiniLM-L6-v2:latest`."""
    listed = name if ":" in name else f"{name}:latest"
    return listed, listed.removesuffix(":latest")


def encoder_entry(enc: ServedEncoder) -> dict:
    """An encoder as Ollama's /api/tags lists a model (details: the file's kind of model, no metadata read)."""
    listed = ollama_names(enc.name)[0]
    mtime = os.path.getmtime(enc.path) if os.path.exists(enc.path) else 0.0
    digest = hashlib.sha256(f"{enc.path}\0{enc.file_bytes}\0{mtime}".encode()).hexdigest()
    details = {"parent_model": "", "format": "gguf", "family": "bert", "families": ["bert"], "parameter_size": "",
               "quantization_level": ""}
    return {"name": listed, "model": listed, "modified_at": timestamp(mtime), "size": enc.file_bytes,
            "digest": digest, "details": details}


def encoder_show(state: ServerState, asked: str) -> dict | None:
    """Ollama's /api/show of the encoder named `asked` (None: no encoder has that name)."""
    enc = next((e for e in state.encoders.values() if asked in ollama_names(e.name)), None)
    if enc is None:
        return None
    entry = encoder_entry(enc)
    info = {"general.architecture": "bert", "general.basename": enc.name, "bert.context_length": enc.model.n_ctx,
            "bert.embedding_length": enc.model.dim, "bert.pooling_type": enc.model.pooling}
    return {"license": "", "modelfile": f"FROM {enc.path}\n", "parameters": "", "template": "",
            "details": entry["details"], "model_info": info, "modified_at": entry["modified_at"],
            "capabilities": ["embedding"] if enc.kind == "embedding" else ["rerank"]}


def _resolve(state: ServerState, enc: ServedEncoder, asked: str) -> None:
    if asked in ollama_names(enc.name):
        return
    if state.engine is not None and asked in ollama_names(state.model_name):
        raise ApiError(400, f"model {asked[:200]!r} does not support embeddings: this server embeds with "
                            f"{ollama_names(enc.name)[0]!r}")
    raise ApiError(404, f"model {asked[:200]!r} not found: this server embeds with {ollama_names(enc.name)[0]!r}")


@router.post("/api/embed")
@_ollama
async def ollama_embed(request: Request):
    received = time.perf_counter()
    state, enc, req = await _intake(request, "embedding", OllamaEmbedRequest)
    _resolve(state, enc, req.model)
    # Ollama: an empty string is no input (answered with no vectors), `truncate` defaults to true
    value = [] if req.input == "" or req.input is None else req.input
    inputs = embedding_inputs(value, "input", allow_ids=False) if value != [] else None
    texts = inputs.texts if inputs else []
    rows = await in_thread(state, _tokenized, enc, texts, None, req.truncate, "input")
    vectors = cut_dimensions(await _embed(request, state, enc, rows, True), req.dimensions, enc.model.dim, True)
    state.metrics.requests.labels(status="200").inc()
    return _json(ollama_embed_answer(vectors, req.model, sum(map(len, rows)), received))


@router.post("/api/embeddings")
@_ollama
async def ollama_embeddings(request: Request):
    """Ollama's older route: one prompt, its vector as the model pools it (not normalised); an empty
    prompt answers an empty vector, as Ollama."""
    state, enc, req = await _intake(request, "embedding", OllamaEmbeddingsRequest)
    _resolve(state, enc, req.model)
    if not req.prompt:
        return {"embedding": []}
    rows = await in_thread(state, _tokenized, enc, [req.prompt], None, True, "prompt")
    vectors = await _embed(request, state, enc, rows, False)
    state.metrics.requests.labels(status="200").inc()
    return _json({"embedding": vectors[0].tolist()})


def _json(content) -> JSONResponse:
    return _FastJSON(content)


class _FastJSON(JSONResponse):
    """orjson when installed: 2,048 vectors of 1,024 floats are 40 MB of JSON."""

    def render(self, content) -> bytes:
        try:
            import orjson
        except ImportError:
            return super().render(content)
        return orjson.dumps(content)
