"""Flattens a step's sequences into the native step's int32 arrays and makes the one call. The
target's steps (the scheduler's plan) and the draft model's (draft_model.py) are built here alike."""

from __future__ import annotations

from typing import NamedTuple, Sequence

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


class StepPart(NamedTuple):
    """One sequence's share of a step."""
    tokens: Sequence[int]     # [count] the tokens to compute, in position order (drafted ones last)
    start: int                # position of tokens[0]
    block_table: list[int]    # the sequence's KV block ids, in position order
    n_logits: int             # its last rows whose logits are wanted (0: none)


def plan_parts(plan: list[ScheduledChunk]) -> list[StepPart]:
    """The scheduler's plan as step parts: each chunk's own tokens, then its drafts; a chunk that
    reaches the end of its sequence wants its last token's logits, and with drafts each drafted token's."""
    parts = []
    for c in plan:
        own = c.count - c.n_draft
        tokens = c.seq.tokens[c.start : c.start + own]
        if c.n_draft:
            tokens = tokens + c.seq.draft_ids[: c.n_draft]
        parts.append(StepPart(tokens, c.start, c.seq.block_table, 1 + c.n_draft if c.samples else 0))
    return parts


class ModelRunner:
    def __init__(self, model, bounds: tuple[int, int, int] | None = None):
        """bounds: (tokens, sequences, blocks per sequence) of any step, to allocate the arrays once
        and fill them in place at every build (the draft model's many small steps; the inputs are then
        views that the next build overwrites); None: arrays of each step's own size."""
        self.model = model
        self._buffers = None
        if bounds is not None:
            n_tok, n_seq, width = bounds
            self._buffers = StepInputs(
                np.zeros(n_tok, dtype=np.int32),               # [n_tok]
                np.zeros(n_tok, dtype=np.int32),               # [n_tok]
                np.zeros(n_seq + 1, dtype=np.int32),           # [n_seq + 1]
                np.full((n_seq, width), -1, dtype=np.int32),   # [n_seq, width]
                np.zeros(n_seq, dtype=np.int32),               # [n_seq]
                np.zeros(n_tok, dtype=np.int32))               # [n_tok] at most one row per token

    def build(self, parts: list[StepPart]) -> StepInputs:
        counts = [len(p.tokens) for p in parts]
        n_tok, n_seq, n_rows = sum(counts), len(parts), sum(p.n_logits for p in parts)
        width = max(len(p.block_table) for p in parts)
        b = self._buffers
        if b is None:
            out = StepInputs(np.empty(n_tok, dtype=np.int32), np.empty(n_tok, dtype=np.int32),
                             np.empty(n_seq + 1, dtype=np.int32), np.empty((n_seq, width), dtype=np.int32),
                             np.empty(n_seq, dtype=np.int32), np.empty(n_rows, dtype=np.int32))
        else:
            out = StepInputs(b.token_ids[:n_tok], b.positions[:n_tok], b.seq_starts[: n_seq + 1],
                             b.block_tables[:n_seq], b.context_lens[:n_seq], b.logits_rows[:n_rows])
        out.seq_starts[0] = 0
        np.cumsum(counts, out=out.seq_starts[1:])
        row = 0
        for i, p in enumerate(parts):
            a, e = out.seq_starts[i], out.seq_starts[i + 1]
            out.token_ids[a:e] = p.tokens
            out.positions[a:e] = np.arange(p.start, p.start + counts[i], dtype=np.int32)
            table = out.block_tables[i]
            table[: len(p.block_table)] = p.block_table
            table[len(p.block_table) :] = -1
            out.context_lens[i] = p.start + counts[i]
            out.logits_rows[row : row + p.n_logits] = np.arange(e - p.n_logits, e, dtype=np.int32)
            row += p.n_logits
        return out

    def run(self, inputs: StepInputs) -> np.ndarray:
        """The native step (it releases the GIL). Returns a copy of the logits
        [n_sampling_sequences, n_vocab], in plan order (the model's buffer is reused by the next step)."""
        return self.model.step(*inputs).copy()
