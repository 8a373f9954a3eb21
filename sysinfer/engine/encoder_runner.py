"""Encoder work (embeddings, rerank scores) beside the chat engine, so a large batch never stalls a stream.

An encoder request's inputs are cut into slices of at most `slice_tokens` tokens (an input longer than
that is a slice of its own: attention over one input can't be split), and each slice is ONE native call.
Slices and chat steps share one compute limiter (the chat engine's step thread), so they never run
at once on the same cores and take turns in order of arrival. While the chat engine has work, the
encoders also keep to a share of the time: after a slice of d seconds they wait d * (1 - share) / share
(chat steps run meanwhile) before the next one; with no chat work they run back to back. So a chat
stream keeps at least about (1 - share) of its speed, and its longest pause is one slice. Encoder
requests take turns slice by slice too (one slice and its pause at a time), so together they keep to
the share and a small request is not stuck behind a large one's whole batch.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator

import anyio
import numpy as np


def slices(inputs: list[list[int]], slice_tokens: int) -> Iterator[tuple[int, int]]:
    """(start, end) ranges of consecutive inputs holding at most slice_tokens tokens each (an input
    over the bound alone)."""
    start, tokens = 0, 0
    for i, ids in enumerate(inputs):
        n = max(1, len(ids))
        if i > start and tokens + n > slice_tokens:
            yield start, i
            start, tokens = i, 0
        tokens += n
    if start < len(inputs):
        yield start, len(inputs)


def _timed(call, batch):
    """(call(batch), its seconds): the native call's own time, not the wait for the limiter."""
    began = time.perf_counter()
    return call(batch), time.perf_counter() - began


class EncoderRunner:
    """One encoder model's work queue. `compute`: the limiter its native calls share with the chat
    engine's steps (its own when there is no chat model); `chat_busy()`: whether chat steps are
    waiting to run (the share applies only then)."""

    def __init__(self, model, compute: anyio.CapacityLimiter | None = None,
                 chat_busy: Callable[[], bool] = lambda: False, slice_tokens: int = 256, share: float = 0.25):
        if not 0 < share <= 1:
            raise ValueError(f"share must be more than 0 and at most 1, got {share!r}")
        self.model = model
        self.compute = compute or anyio.CapacityLimiter(1)
        self.chat_busy = chat_busy
        self.slice_tokens, self.share = slice_tokens, share
        self._turn = anyio.Lock()  # one slice (and its pause) at a time, across this runner's requests
        self.slices_run = 0          # native calls made (tests and /metrics)
        self.seconds = 0.0           # time in them

    async def embed(self, inputs: list[list[int]], normalize: bool) -> np.ndarray:
        """float32 [len(inputs), dim]: the pooled vectors, L2-normalised when asked."""
        return await self._run(inputs, lambda batch: self.model.embed(batch, normalize))

    async def rerank(self, pairs: list[list[int]]) -> np.ndarray:
        """float32 [len(pairs)]: the classification head's raw logit per (query, document) pair."""
        return await self._run(pairs, self.model.rerank)

    async def _run(self, inputs: list[list[int]], call) -> np.ndarray:
        parts = []
        for start, end in slices(inputs, self.slice_tokens):
            async with self._turn:
                # not cancellable: a client that leaves ends its request after this slice, not in it
                out, took = await anyio.to_thread.run_sync(_timed, call, inputs[start:end], limiter=self.compute)
                parts.append(np.asarray(out))
                self.slices_run += 1
                self.seconds += took
                await self._yield_to_chat(took)
        return np.concatenate(parts) if parts else np.zeros((0,), np.float32)

    async def _yield_to_chat(self, took: float) -> None:
        """While chat has work, wait so that encoders keep to their share of the time."""
        if self.share >= 1:
            return
        until = time.perf_counter() + took * (1 - self.share) / self.share
        while self.chat_busy():
            left = until - time.perf_counter()
            if left <= 0:
                return
            await anyio.sleep(min(left, 0.005))  # chat going idle ends the wait within 5 ms
