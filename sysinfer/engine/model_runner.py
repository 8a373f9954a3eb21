"""Flattens a scheduled step into the native step's int32 arrays and makes the one call."""

from __future__ import annotations

import time

import numpy as np

from .scheduler import ScheduledChunk


class ModelRunner:
    def __init__(self, model):
        self.model = model
        self.step_seconds = 0.0   # time inside the native step, last step
        self.build_seconds = 0.0  # time spent building its inputs, last step

    def build(self, plan: list[ScheduledChunk]):
        start = time.perf_counter()
        counts = [c.count for c in plan]
        n_tok = sum(counts)
        token_ids = np.empty(n_tok, dtype=np.int32)   # [n_tok] new tokens of every sequence
        positions = np.empty(n_tok, dtype=np.int32)   # [n_tok]
        seq_starts = np.zeros(len(plan) + 1, dtype=np.int32)  # [n_seq + 1]
        np.cumsum(counts, out=seq_starts[1:])
        width = max(len(c.seq.block_table) for c in plan)
        block_tables = np.full((len(plan), width), -1, dtype=np.int32)  # [n_seq, max_blocks]
        context_lens = np.empty(len(plan), dtype=np.int32)  # [n_seq]
        logits_rows = []
        for i, c in enumerate(plan):
            a, b = seq_starts[i], seq_starts[i + 1]
            token_ids[a:b] = c.seq.tokens[c.start : c.start + c.count]
            positions[a:b] = np.arange(c.start, c.start + c.count, dtype=np.int32)
            block_tables[i, : len(c.seq.block_table)] = c.seq.block_table
            context_lens[i] = c.start + c.count
            if c.samples:
                logits_rows.append(b - 1)
        self.build_seconds = time.perf_counter() - start
        return token_ids, positions, seq_starts, block_tables, context_lens, np.asarray(logits_rows, dtype=np.int32)

    def run(self, inputs) -> np.ndarray:
        """The native step (call from a worker thread: it releases the GIL). Returns a copy of the
        logits [n_sampling_sequences, n_vocab], in plan order."""
        start = time.perf_counter()
        logits = self.model.step(*inputs).copy()
        self.step_seconds = time.perf_counter() - start
        return logits
