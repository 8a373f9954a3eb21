"""ModelRunner.build: the native step's arrays from step parts, for the target's plan (plan_parts) and
the draft model's steps (arrays allocated once, filled in place), the two alike."""

from __future__ import annotations

import numpy as np

from sysinfer.engine.model_runner import ModelRunner, StepPart, plan_parts
from sysinfer.engine.scheduler import ScheduledChunk
from sysinfer.engine.sequence import Sequence


def _seq(prompt, output=(), blocks=(), drafts=()):
    seq = Sequence(request_id="r", prompt_ids=list(prompt), params=None)
    seq.output_ids = list(output)
    seq.block_table = list(blocks)
    seq.draft_ids = list(drafts)
    return seq


def test_plan_parts_arrays_as_the_native_step_reads_them():
    prefill = _seq([5, 6, 7, 8, 9], blocks=[3, 4])              # a middle chunk: samples nothing
    decode = _seq([1, 2], output=[10], blocks=[7], drafts=[11, 12])  # its last token, then 2 drafts
    plan = [ScheduledChunk(prefill, start=1, count=3), ScheduledChunk(decode, start=2, count=3, n_draft=2)]
    got = ModelRunner(None).build(plan_parts(plan))
    assert got.token_ids.tolist() == [6, 7, 8, 10, 11, 12]
    assert got.positions.tolist() == [1, 2, 3, 2, 3, 4]
    assert got.seq_starts.tolist() == [0, 3, 6]
    assert got.block_tables.tolist() == [[3, 4], [7, -1]]
    assert got.context_lens.tolist() == [4, 5]
    assert got.logits_rows.tolist() == [3, 4, 5]  # the decode's last token and each draft
    assert all(a.dtype == np.int32 for a in got)


def test_bounded_arrays_are_filled_in_place_and_equal_fresh_ones():
    """The draft model's runner: one set of arrays for every step, a later smaller step leaving no
    trace of an earlier bigger one (the block tables' unused ends are -1 again)."""
    bounded, fresh = ModelRunner(None, (8, 3, 4)), ModelRunner(None)
    steps = [[StepPart([1, 2, 3], 0, [0, 1, 2], 1), StepPart([4], 7, [5, 6], 1), StepPart([9, 9], 2, [8], 0)],
             [StepPart([5], 3, [2], 1)]]
    for parts in steps:
        a, b = bounded.build(parts), fresh.build(parts)
        assert a.token_ids.base is not None  # a view of the arrays allocated once
        for x, y in zip(a, b):
            width = y.shape[-1] if y.ndim == 2 else None
            x = x[:, :width] if width is not None else x
            assert x.tolist() == y.tolist()
        assert (a.block_tables[:, b.block_tables.shape[1]:] == -1).all()
