"""Flattens a scheduled step into the native step's int32 arrays and makes the one call."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .scheduler import ScheduledChunk


class StepInputs(NamedTuple):
    """The native step's arguments (see Model.step in native/src/model.h)."""
    token_ids: np.ndarray     # [n_tok] int32: new tokens of every sequence, sequence after sequence
    positions: np.ndarray     # [n_tok] int32: each token's position in its sequence
    seq_starts: np.ndarray    # [n_seq + 1] int32: sequence s owns tokens seq_starts[s] .. seq_starts[s+1]-1
    block_tables: np.ndarray  # [n_seq, max_blocks] int32: KV block ids, -1 past a sequence's end
    context_lens: np.ndarray  # [n_seq] int32: tokens in each sequence's cache after this step
    logits_rows: np.ndarray   # [n_sampling] int32: token rows whose logits are wanted


class ModelRunner:
    def __init__(self, model):
        self.model = model

    def build(self, plan: list[ScheduledChunk]) -> StepInputs:
        counts = [c.count for c in plan]
        n_tok = sum(counts)
        token_ids = np.empty(n_tok, dtype=np.int32)
        positions = np.empty(n_tok, dtype=np.int32)
        seq_starts = np.zeros(len(plan) + 1, dtype=np.int32)
        np.cumsum(counts, out=seq_starts[1:])
        width = max(len(c.seq.block_table) for c in plan)
        block_tables = np.full((len(plan), width), -1, dtype=np.int32)
        context_lens = np.empty(len(plan), dtype=np.int32)
        logits_rows = []
        for i, c in enumerate(plan):
            a, b = seq_starts[i], seq_starts[i + 1]
            own = c.count - c.n_draft
            token_ids[a : a + own] = c.seq.tokens[c.start : c.start + own]
            token_ids[a + own : b] = c.seq.draft_ids[: c.n_draft]
            positions[a:b] = np.arange(c.start, c.start + c.count, dtype=np.int32)
            block_tables[i, : len(c.seq.block_table)] = c.seq.block_table
            context_lens[i] = c.start + c.count
            if c.samples:  # the last token's logits, and with drafts each drafted token's too
                logits_rows.extend(range(b - 1 - c.n_draft, b))
        return StepInputs(token_ids, positions, seq_starts, block_tables, context_lens,
                          np.asarray(logits_rows, dtype=np.int32))

    def run(self, inputs: StepInputs) -> np.ndarray:
        """The native step (it releases the GIL). Returns a copy of the logits
        [n_sampling_sequences, n_vocab], in plan order (the model's buffer is reused by the next step)."""
        return self.model.step(*inputs).copy()
