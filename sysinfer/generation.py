"""One sequence, start to finish, without the engine: what `sysinfer generate` and `bench` run.

Prefill in chunks of the model's step size, then one decode step per token through the paged
cache, sampling each token and streaming its text as soon as it is complete UTF-8.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from .engine.detokenizer import IncrementalDetokenizer, StopChecker
from .engine.sampling import Sampler, SamplingParams
from .model.loader import LoadedModel


@dataclass
class GenerationResult:
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"
    prompt_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0


class SingleSequence:
    """Owns blocks 0..n of the model's KV cache for one sequence (no other user of the model)."""

    def __init__(self, model: LoadedModel, prompt_ids: list[int], max_new_tokens: int):
        total = len(prompt_ids) + max_new_tokens
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if total > model.n_ctx:
            raise ValueError(f"prompt ({len(prompt_ids)} tokens) + max tokens ({max_new_tokens}) exceeds the context "
                             f"size {model.n_ctx}")
        n_blocks = -(-total // model.block_size)
        if n_blocks > model.n_kv_blocks:
            raise ValueError(f"{total} tokens need {n_blocks} KV blocks; the cache has {model.n_kv_blocks}")
        self.model = model
        self.block_table = np.arange(n_blocks, dtype=np.int32)[None, :]  # [1, n_blocks]
        self.length = 0  # tokens in the cache

    def feed(self, tokens: list[int], want_logits: bool) -> np.ndarray | None:
        """Appends tokens (in step-sized chunks); returns the last token's logits if asked."""
        logits = None
        for start in range(0, len(tokens), self.model.max_step_tokens):
            chunk = tokens[start : start + self.model.max_step_tokens]
            last = start + len(chunk) == len(tokens)
            n = len(chunk)
            out = self.model.step(chunk, np.arange(self.length, self.length + n), [0, n], self.block_table,
                                  [self.length + n], [n - 1] if (last and want_logits) else [])
            self.length += n
            if last and want_logits:
                logits = out[0]
        return logits


def generate_stream(model: LoadedModel, tokenizer, prompt_ids: list[int], params: SamplingParams,
                    result: GenerationResult | None = None) -> Iterator[str]:
    """Yields text deltas; fills `result` (tokens, finish reason, timings) as it goes."""
    result = result if result is not None else GenerationResult()
    result.prompt_tokens = len(prompt_ids)
    seq = SingleSequence(model, prompt_ids, params.max_tokens)
    sampler = Sampler(params, prompt_ids)
    detok = IncrementalDetokenizer(tokenizer, prompt_ids)
    stops = StopChecker(params.stop)
    stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(tokenizer.stop_ids))

    start = time.perf_counter()
    logits = seq.feed(prompt_ids, want_logits=True)
    result.prefill_seconds = time.perf_counter() - start
    start = time.perf_counter()
    stopped = False
    while True:
        token = sampler.sample(logits, result.token_ids)
        if token in stop_ids:
            result.finish_reason = "stop"
            break
        result.token_ids.append(token)
        text, stopped = stops.feed(detok.add(token))
        if text:
            result.text += text
            yield text
        if stopped:
            result.finish_reason = "stop"
            break
        if len(result.token_ids) >= params.max_tokens:
            break
        logits = seq.feed([token], want_logits=True)
    if not stopped:
        text, _ = stops.feed(detok.flush())
        text += stops.flush()
        if text:
            result.text += text
            yield text
    result.decode_seconds = time.perf_counter() - start
