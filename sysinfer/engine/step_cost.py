"""What a decode step of n rows costs on this machine and model, learned from the steps the engine runs.

Speculation and batching pay only where a step of n rows costs less than n steps of one: at batch 1
a small model's step is bound by reading the weights (9 rows cost about 2 rows' time on SmolLM2), a
7B-13B model's few-row step may not be (2 rows cost 1.36x one on the Llama-3-8B shape before its
few-row kernels: issue 28). Rather than assume a curve, the engine times its own native steps
(llm_engine.execute) and this table keeps, per row count, the median of the last WINDOW timings of
steps made only of decode rows (a generated token per sequence, and its drafts). Medians, so a step
that another process slowed (the machine is shared) does not move the estimate; a timing older than
MAX_AGE steps is dropped, so the curve follows the context growing and the machine's load, and a
point no longer measured is estimated again (and tried again when it looks worth it).

Row counts never measured are estimated from those that were: between two measured counts on the
line joining them; past the largest, that count's cost plus the mean cost per row so far (at least
PRIOR_ROW, the guess before anything but one row was measured: steps bound by the weights' read,
as the design assumes). The policy (spec_policy.py) never drafts before one plain row has been
measured, so a guess is always anchored to a measured step and is tried at most once per MAX_AGE.
"""

from __future__ import annotations

import statistics
from collections import deque

WINDOW = 9        # timings kept per row count (their median is the estimate)
MAX_AGE = 512     # a timing older than this many observed steps no longer counts
PRIOR_ROW = 0.1   # an unmeasured extra row's cost, in one-row steps, before any multi-row step was measured


class StepCost:
    def __init__(self, window: int = WINDOW, max_age: int = MAX_AGE):
        self.window, self.max_age = window, max_age
        self.samples: dict[int, deque[tuple[int, float]]] = {}  # rows -> (observation number, seconds)
        self.observed = 0  # steps observed so far (the clock that ages timings)

    def observe(self, rows: int, seconds: float) -> None:
        """A step of `rows` decode rows took `seconds` (its native call)."""
        if rows < 1 or not seconds >= 0.0:
            return
        self.observed += 1
        self.samples.setdefault(rows, deque(maxlen=self.window)).append((self.observed, seconds))

    def measured(self, rows: int) -> float | None:
        """The median of the recent timings of steps of exactly `rows` rows (None: none recent)."""
        times = self.samples.get(rows)
        if not times:
            return None
        while times and times[0][0] <= self.observed - self.max_age:
            times.popleft()
        return statistics.median(t for _, t in times) if times else None

    def estimate(self, rows: int) -> float | None:
        """Seconds a step of `rows` rows is expected to take; None while nothing at or below `rows`
        has been measured (no anchor for a guess)."""
        own = self.measured(rows)
        if own is not None:
            return own
        below = next(((r, c) for r in range(rows - 1, 0, -1) if (c := self.measured(r)) is not None), None)
        if below is None:
            return None
        above = next(((r, c) for r in sorted(self.samples) if r > rows and (c := self.measured(r)) is not None), None)
        r0, c0 = below
        if above is not None:
            r1, c1 = above
            return c0 + (c1 - c0) * (rows - r0) / (r1 - r0)
        one = self.measured(1)
        per_row = PRIOR_ROW * one if one is not None else PRIOR_ROW * c0 / r0
        if one is not None and r0 > 1:
            per_row = max(per_row, (c0 - one) / (r0 - 1))
        return c0 + per_row * (rows - r0)
