"""The encoder models a server holds beside (or instead of) its chat model: an embedding model and a
reranker, each loaded from its own GGUF at start-up and run by its own EncoderRunner, which shares
the cores with the chat engine's steps (engine/encoder_runner.py)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..config import ServerConfig
from ..engine.encoder_runner import EncoderRunner
from ..model.model_file import ModelLoadError

KINDS = ("embedding", "rerank")


@dataclass
class ServedEncoder:
    kind: str          # "embedding" | "rerank": the routes it answers
    name: str          # its id in /v1/models and the answers (--embedding-model-name, else the file's name)
    path: str
    model: Any         # sysinfer.model.encoder_model.EncoderModel (or a test's stand-in)
    load_seconds: float = 0.0
    runner: EncoderRunner | None = field(default=None, repr=False)  # set once the server knows its chat engine

    @property
    def file_bytes(self) -> int:
        return os.path.getsize(self.path) if os.path.exists(self.path) else 0


def wanted(cfg: ServerConfig) -> list[tuple[str, str, str]]:
    """(kind, path, name) of each encoder the config names."""
    out = []
    for kind, path, name in (("embedding", cfg.embedding_model, cfg.embedding_model_name),
                             ("rerank", cfg.rerank_model, cfg.rerank_model_name)):
        if path:
            out.append((kind, path, name or os.path.basename(path).removesuffix(".gguf")))
    return out


def load_encoders(cfg: ServerConfig, loader=None) -> dict[str, ServedEncoder]:
    """Runs in a worker thread at start-up. `loader(path, threads)`: the encoder loader (tests pass a
    fake). A file whose kind is not the one its flag says is a load error naming the flag."""
    served = {}
    for kind, path, name in wanted(cfg):
        loader = loader or _encoder_loader()
        began = time.perf_counter()
        try:
            model = loader(path, threads=cfg.threads)
        except (OSError, ValueError, ModelLoadError) as e:  # said with the flag that named the file
            raise ModelLoadError(f"--{kind}-model {path}: {e}") from None
        if model.kind != kind:
            raise ModelLoadError(f"--{kind}-model {path}: the file holds a {model.kind} model, not a {kind} model"
                             + (" (give it to --rerank-model)" if model.kind == "rerank" else
                                " (give it to --embedding-model)" if model.kind == "embedding" else ""))
        served[kind] = ServedEncoder(kind, name, path, model, time.perf_counter() - began)
    return served


def _encoder_loader():
    """The real loader (a function, so that API tests can put a stand-in in its place)."""
    from ..model.encoder_model import load_encoder
    return load_encoder


def start_runners(served: dict[str, ServedEncoder], cfg: ServerConfig, engine=None) -> None:
    """Each encoder's runner: with a chat engine, its native calls take turns with the engine's steps
    (one limiter) and keep to the configured share while chat has work; without one, their own."""
    enc_cfg = cfg.encoder_config()
    compute = engine.compute_limiter if engine is not None else anyio.CapacityLimiter(1)
    busy = engine.has_work if engine is not None else (lambda: False)
    for enc in served.values():
        enc.runner = EncoderRunner(enc.model, compute, busy, enc_cfg.slice_tokens, enc_cfg.share)
