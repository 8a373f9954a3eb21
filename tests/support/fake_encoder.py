"""A deterministic stand-in for the encoder model (sysinfer/model/encoder_model.py's interface), for
tests of the API layer and of the encoder scheduling without a GGUF: words are tokens, a vector is the
mean of per-token pseudo-random vectors, a rerank score counts the query's words found in the document."""

from __future__ import annotations

import time
import zlib

import numpy as np

CLS, SEP = 1, 2


class FakeEncoder:
    def __init__(self, kind: str = "embedding", dim: int = 8, n_ctx: int = 32, n_vocab: int = 1000,
                 seconds_per_token: float = 0.0, name: str = "fake-encoder"):
        self.name, self.kind, self.dim, self.n_ctx, self.n_vocab = name, kind, dim, n_ctx, n_vocab
        self.pooling = "rank" if kind == "rerank" else "mean"
        self.seconds_per_token = seconds_per_token  # a slice "computes" this long per token (scheduling tests)
        self.calls: list[int] = []  # tokens per native call

    def _word(self, w: str) -> int:
        return 3 + zlib.crc32(w.encode()) % (self.n_vocab - 3)

    def tokenize(self, text: str) -> list[int]:
        return [CLS] + [self._word(w) for w in text.split()] + [SEP]

    def tokenize_pair(self, query: str, doc: str) -> list[int]:
        return self.tokenize(query) + self.tokenize(doc)[1:]

    def _work(self, batch: list[list[int]]) -> None:
        n = sum(len(ids) for ids in batch)
        self.calls.append(n)
        if self.seconds_per_token:
            time.sleep(n * self.seconds_per_token)

    def embed(self, batch: list[list[int]], normalize: bool) -> np.ndarray:
        self._work(batch)
        out = np.zeros((len(batch), self.dim), np.float32)  # [n, dim]
        for i, ids in enumerate(batch):
            rows = [np.random.default_rng(t).standard_normal(self.dim) for t in ids]
            v = np.mean(rows, axis=0)
            out[i] = v / np.linalg.norm(v) if normalize else v
        return out

    def rerank(self, batch: list[list[int]]) -> np.ndarray:
        self._work(batch)
        out = np.zeros(len(batch), np.float32)  # [n]: raw "logits"
        for i, ids in enumerate(batch):
            q_end = ids.index(SEP)
            query, doc = set(ids[1:q_end]), set(ids[q_end + 1:-1])
            out[i] = len(query & doc) - 0.5
        return out
