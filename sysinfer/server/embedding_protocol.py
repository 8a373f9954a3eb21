"""The encoder APIs' bodies and answers: OpenAI's /v1/embeddings, TEI's /embed, the Jina/Cohere rerank
(which llama.cpp's and vLLM's servers also answer) with TEI's rerank shape beside it, and Ollama's
/api/embed and /api/embeddings. Inputs are checked here by hand, not by pydantic unions, so that a
refusal names the very element (`input[3]`, `documents[2].text`)."""

from __future__ import annotations

import base64
import math
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from ..limits import MAX_ENCODER_INPUTS


class InputError(Exception):
    """A refused request: status, message, the field it names, OpenAI's error code."""

    def __init__(self, message: str, param: str | None, code: str = "invalid_value", status: int = 400):
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status


# ---- bodies (unknown fields ignored, as OpenAI's, TEI's and Ollama's servers do) ----
class EmbeddingRequest(BaseModel):
    """OpenAI's. `input`: a string, strings, token ids or lists of ids (checked by embedding_inputs)."""
    model_config = ConfigDict(extra="ignore")
    input: Any = None
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
    truncate: StrictBool = False           # sysinfer's (and vLLM's truncate_prompt_tokens' spirit): cut, don't refuse


class TeiEmbedRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    inputs: Any = None
    normalize: StrictBool = True
    truncate: StrictBool = False
    truncation_direction: Literal["Right", "Left", "right", "left"] = "Right"
    dimensions: int | None = Field(default=None, ge=1)


class RerankRequest(BaseModel):
    """Jina's and Cohere's (`documents`), or TEI's (`texts`, answered in TEI's shape)."""
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    query: Any = None
    documents: Any = None
    texts: Any = None                # TEI's name for the documents
    top_n: int | None = Field(default=None, ge=1)
    return_documents: StrictBool = True    # Jina's default (vLLM always returns them); Cohere clients say false
    truncate: StrictBool = False
    raw_scores: StrictBool = False         # TEI's: False applies the sigmoid (TEI's default)
    return_text: StrictBool = False        # TEI's


class OllamaEmbedRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    input: Any = None
    truncate: StrictBool = True            # Ollama's default: cut each input to the context
    dimensions: int | None = Field(default=None, ge=1)
    keep_alive: Any = None
    options: Any = None


class OllamaEmbeddingsRequest(BaseModel):
    """Ollama's older route: one prompt, one vector (not normalised, as Ollama's)."""
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    prompt: str = ""
    keep_alive: Any = None
    options: Any = None


# ---- inputs ----
@dataclass
class Inputs:
    texts: list[str] | None        # text inputs, or None when the client sent token ids
    ids: list[list[int]] | None    # token-id inputs as sent


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _count(n: int, field: str) -> None:
    if n == 0:
        raise InputError(f"{field} must not be empty", field)
    if n > MAX_ENCODER_INPUTS:
        raise InputError(f"{field} has {n} items; at most {MAX_ENCODER_INPUTS} per request", field)


def embedding_inputs(value: Any, field: str = "input", allow_ids: bool = True, allow_empty_text: bool = False) -> Inputs:
    """OpenAI's `input` forms (TEI's and Ollama's are the text ones): a string, a list of strings, a
    list of token ids (one input), or a list of lists of ids."""
    if isinstance(value, str):
        _text_ok(value, field, allow_empty_text)
        return Inputs([value], None)
    if not isinstance(value, list):
        kind = "missing" if value is None else f"a JSON {_json_type(value)}"
        what = "a string, a list of strings" + (", a list of token ids or a list of lists of token ids" if allow_ids else "")
        raise InputError(f"{field} must be {what}; got {kind}", field,
                         "missing_required_parameter" if value is None else "invalid_type")
    _count(len(value), field)
    if all(isinstance(v, str) for v in value):
        for i, v in enumerate(value):
            _text_ok(v, f"{field}[{i}]", allow_empty_text)
        return Inputs(list(value), None)
    if allow_ids and all(_is_int(v) for v in value):
        return Inputs(None, [list(value)])
    if allow_ids and all(isinstance(v, list) for v in value):
        for i, ids in enumerate(value):
            if not ids:
                raise InputError(f"{field}[{i}] must not be empty", f"{field}[{i}]")
            bad = next((j for j, t in enumerate(ids) if not _is_int(t)), None)
            if bad is not None:
                raise InputError(f"{field}[{i}][{bad}] must be a token id (an integer)", f"{field}[{i}][{bad}]",
                                 "invalid_type")
        return Inputs(None, [list(v) for v in value])
    return _mixed(value, field, allow_ids)


def _mixed(value: list, field: str, allow_ids: bool) -> Inputs:
    """The refusal of a list whose items are not all of one accepted kind: names the first odd item."""
    kinds = [("a string", lambda v: isinstance(v, str))]
    if allow_ids:
        kinds += [("a token id (an integer)", _is_int), ("a list of token ids", lambda v: isinstance(v, list))]
    for what, fits in kinds:
        if fits(value[0]):
            bad = next(i for i, v in enumerate(value) if not fits(v))
            raise InputError(f"{field}[{bad}] must be {what}, as {field}[0] is", f"{field}[{bad}]", "invalid_type")
    raise InputError(f"{field}[0] must be " + (" or ".join(w for w, _ in kinds)), f"{field}[0]", "invalid_type")


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def clean(text: str) -> str:
    """The text with lone surrogates (JSON allows "\\ud800"; UTF-8 can't hold it) as U+FFFD, as a
    UTF-8 decoder would read their bytes."""
    return _LONE_SURROGATE.sub("\ufffd", text) if _LONE_SURROGATE.search(text) else text


def _text_ok(text: str, field: str, allow_empty: bool) -> None:
    if not text and not allow_empty:  # OpenAI's documented rule: input "cannot be an empty string"
        raise InputError(f"{field} must not be an empty string", field)


def _json_type(value: Any) -> str:
    return {bool: "boolean", int: "number", float: "number", dict: "object"}.get(type(value), type(value).__name__)


def rerank_documents(req: RerankRequest) -> tuple[str, list[str], bool]:
    """(query, documents, TEI's shape?): `documents` items are strings or {"text": ...} (Cohere's)."""
    if not isinstance(req.query, str):
        raise InputError("query must be a string" + ("" if req.query is not None else "; it is missing"), "query",
                         "missing_required_parameter" if req.query is None else "invalid_type")
    tei = req.documents is None and req.texts is not None
    field, value = ("texts", req.texts) if tei else ("documents", req.documents)
    if not isinstance(value, list):
        raise InputError(f"{field} must be a list of strings" + ("" if tei else ' or of {"text": ...} objects'), field,
                         "missing_required_parameter" if value is None else "invalid_type")
    _count(len(value), field)
    docs = []
    for i, d in enumerate(value):
        if isinstance(d, dict) and not tei:
            d = d.get("text")
            if not isinstance(d, str):
                raise InputError(f"{field}[{i}].text must be a string", f"{field}[{i}].text", "invalid_type")
        elif not isinstance(d, str):
            raise InputError(f"{field}[{i}] must be a string", f"{field}[{i}]", "invalid_type")
        docs.append(d)
    return req.query, docs, tei


def check_ids(ids: list[list[int]], n_vocab: int | None, field: str = "input") -> None:
    if n_vocab is None:
        return
    for i, row in enumerate(ids):
        bad = next((t for t in row if not 0 <= t < n_vocab), None)
        if bad is not None:
            raise InputError(f"{field}[{i}]: token id {bad} is not in this model's vocabulary (0..{n_vocab - 1})",
                             f"{field}[{i}]")


def fit(ids: list[int], n_ctx: int, truncate: bool, where: str, left: bool = False) -> list[int]:
    """ids cut to the context when `truncate`, keeping the first and the last token (the tokenizer's
    [CLS]/[SEP], <s>/</s> or EOS: pooling reads them); else a 400 naming the input."""
    if len(ids) <= n_ctx:
        return ids
    if not truncate:
        raise InputError(f"{where} has {len(ids)} tokens; this model's context is {n_ctx} (send truncate: true "
                         "to cut it)", where, "context_length_exceeded")
    if n_ctx < 2:
        return ids[:n_ctx]
    return ids[:1] + ids[len(ids) - n_ctx + 1:] if left else ids[:n_ctx - 1] + ids[-1:]


# ---- answers ----
def cut_dimensions(vectors: np.ndarray, dimensions: int | None, dim: int, normalized: bool,
                   field: str = "dimensions") -> np.ndarray:
    """The first `dimensions` components (Matryoshka-style, as OpenAI's `dimensions`), renormalised
    when the vectors were unit vectors."""
    if dimensions is None or dimensions == dim:
        return vectors
    if dimensions > dim:
        raise InputError(f"{field} must be at most this model's {dim}, got {dimensions}", field)
    out = vectors[:, :dimensions]
    return l2_normalize(out) if normalized else out


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def openai_embeddings(vectors: np.ndarray, model: str, n_tokens: int, encoding: str) -> dict[str, Any]:
    def encode(v: np.ndarray):
        if encoding == "base64":  # little-endian float32, as OpenAI's (the openai client asks for it by default)
            return base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")
        return v.tolist()
    data = [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}


def rerank_results(scores: np.ndarray, docs: list[str], top_n: int | None, with_docs: bool) -> list[dict[str, Any]]:
    """Jina/Cohere results, best first: relevance_score is the head's raw logit, as llama.cpp's server."""
    order = _best_first(scores)[:top_n]
    return [{"index": int(i), "relevance_score": float(scores[i])} | ({"document": {"text": docs[i]}} if with_docs else {})
            for i in order]


def rerank_answer(results: list[dict[str, Any]], model: str, n_tokens: int) -> dict[str, Any]:
    return {"id": f"rerank-{uuid.uuid4().hex}", "model": model, "object": "list", "results": results,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}


def tei_rerank_results(scores: np.ndarray, docs: list[str], top_n: int | None, raw: bool,
                       with_text: bool) -> list[dict[str, Any]]:
    """TEI's shape, best first: `score` is the sigmoid of the logit unless raw_scores."""
    order = _best_first(scores)[:top_n]
    value = (lambda x: float(x)) if raw else (lambda x: 1.0 / (1.0 + math.exp(-float(x))))
    return [{"index": int(i), "score": value(scores[i])} | ({"text": docs[i]} if with_text else {}) for i in order]


def _best_first(scores: np.ndarray) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))  # ties: the client's order


def ollama_embed_answer(vectors: np.ndarray, model: str, n_tokens: int, received: float,
                        loaded: float = 0.0) -> dict[str, Any]:
    ns = lambda s: max(0, int(s * 1e9))  # noqa: E731
    return {"model": model, "embeddings": vectors.tolist(), "total_duration": ns(time.perf_counter() - received),
            "load_duration": ns(loaded), "prompt_eval_count": n_tokens}
