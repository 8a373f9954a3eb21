"""A row's logits never depend on how many rows its sequence (or the step) has: the logits of each
row of a verify step (1 + k tokens of one sequence) are bit for bit those of plain decode steps at the
same positions, with or without another sequence in the step, on the real SmolLM2 at contexts short
and long enough for the attention to split its keys. Greedy speculation is identical to plain
decoding only because of this (an argmax check alone would pass on most near-ties by luck)."""

from __future__ import annotations

import numpy as np
import pytest

from support.model_files import smollm2_q4_0

K = 6            # drafted tokens verified in one step
N_CTX = 2048


@pytest.fixture(scope="module")
def model(load):
    return load(smollm2_q4_0(), n_ctx=N_CTX, kv_blocks=2 * N_CTX // 16 + 8, max_out_rows=2 * (1 + K))


def _tokens(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(100, 20_000, size=n, dtype=np.int32)


def _prefill(model, tokens, table) -> None:
    """Writes tokens [0, n) into the blocks of `table`, in chunks the size of the step."""
    for a in range(0, len(tokens), 512):
        b = min(len(tokens), a + 512)
        model.step(tokens[a:b], np.arange(a, b), [0, b - a], table[None], [b], [b - a - 1])


def _table(model, first_block: int) -> np.ndarray:
    n = N_CTX // model.block_size
    return np.arange(first_block, first_block + n, dtype=np.int32)


@pytest.mark.parametrize("context", [40, 700, 1500])
def test_verify_rows_equal_decode_rows_bitwise(model, context):
    seq = _tokens(context + K + 1, seed=context)
    prompt, tail = seq[:context], seq[context:]
    table, other = _table(model, 0), _table(model, N_CTX // model.block_size)
    other_tokens = _tokens(context // 2 + 5, seed=1)

    _prefill(model, prompt, table)
    decoded = []  # one plain decode step per position: the reference rows
    for i, t in enumerate(tail):
        pos = context + i
        decoded.append(model.step([t], [pos], [0, 1], table[None], [pos + 1], [0])[0].copy())

    _prefill(model, prompt, table)  # the same KV again (the tail's slots are rewritten by the verify)
    verify = model.step(tail, np.arange(context, context + K + 1), [0, K + 1], table[None],
                        [context + K + 1], np.arange(K + 1)).copy()
    for i in range(K + 1):
        assert np.array_equal(verify[i], decoded[i]), f"verify row {i} at context {context} differs from decode"

    # The same verify step after another sequence's 12 rows (batched speculation): here the verify
    # rows are computed by whole-range items where alone they were split across threads (split-K
    # takes at most 16 short-sequence tokens per step), and the bits must not move either way.
    n_other = 12
    _prefill(model, prompt, table)
    _prefill(model, other_tokens[:-n_other], other)
    o0 = len(other_tokens) - n_other
    tokens = np.concatenate([other_tokens[o0:], tail])
    positions = np.concatenate([np.arange(o0, o0 + n_other), np.arange(context, context + K + 1)])
    batched = model.step(tokens, positions, [0, n_other, n_other + K + 1], np.stack([other, table]),
                         [o0 + n_other, context + K + 1], np.arange(n_other, n_other + K + 1)).copy()
    for i in range(K + 1):
        assert np.array_equal(batched[i], decoded[i]), f"batched verify row {i} at context {context} differs"
