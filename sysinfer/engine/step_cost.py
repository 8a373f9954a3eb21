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
line joining them; past the largest, that count's cost plus the mean cost per row from the smallest
measured count (one row, when measured) to it: at least PRIOR_ROW of a one-row step's cost when one
row was measured, and PRIOR_ROW of the one count's cost per row before a second count was measured
(steps bound by the weights' read, as the design assumes). The policy (spec_policy.py) never drafts before one plain row has been
measured, so a guess is always anchored to a measured step and is tried at most once per MAX_AGE.

The scheduler keeps a second table (bucketed=True) of every step, prefill chunks included, by the
tokens it computes (chunk_policy.py): up to EXACT rows a count is its own key, above that counts
share a key per quarter octave (128, 152, 181, 215, 256, ...);
a bucket's point is the median row count and the median time of its recent steps.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

WINDOW = 9        # timings kept per row count (their median is the estimate)
MAX_AGE = 512     # a timing older than this many observed steps no longer counts
PRIOR_ROW = 0.1   # an unmeasured extra row's cost, in one-row steps, before any multi-row step was measured
EXACT = 16        # bucketed tables: row counts up to this are keys of their own; above, a key per quarter octave


class StepCost:
    def __init__(self, window: int = WINDOW, max_age: int = MAX_AGE, bucketed: bool = False):
        self.window, self.max_age, self.bucketed = window, max_age, bucketed
        # key (a row count) -> (observation number, rows, seconds); rows == key unless bucketed
        self.samples: dict[int, deque[tuple[int, int, float]]] = {}
        self.observed = 0  # steps observed so far (the clock that ages timings)
        self._points: list[tuple[float, float]] | None = None  # [(rows, seconds)] per key, by rows (a cache)

    def observe(self, rows: int, seconds: float) -> None:
        """A step of `rows` rows (tokens computed) took `seconds` (its native call)."""
        if rows < 1 or not seconds >= 0.0:
            return
        self.observed += 1
        self.samples.setdefault(self.key(rows), deque(maxlen=self.window)).append((self.observed, rows, seconds))
        self._points = None

    def key(self, rows: int) -> int:
        """The row count whose timings stand for `rows` (itself, unless bucketed and above EXACT)."""
        if not self.bucketed or rows <= EXACT:
            return rows
        return round(2.0 ** (round(4.0 * math.log2(rows)) / 4.0))

    def _point(self, key: int) -> tuple[float, float] | None:
        """(median rows, median seconds) of the key's recent timings (None: none recent)."""
        times = self.samples.get(key)
        if not times:
            return None
        while times and times[0][0] <= self.observed - self.max_age:
            times.popleft()
        if not times:
            return None
        return statistics.median(r for _, r, _ in times), statistics.median(t for _, _, t in times)

    def points(self) -> list[tuple[float, float]]:
        """[(rows, seconds)] of every key with recent timings, by rows, the seconds made non-decreasing
        (a step of more rows costs no less: where a median says otherwise, another process slowed the
        smaller step, and adjacent violators are pooled, weighted by their timings, into one level)."""
        if self._points is None:
            keys = [key for key in sorted(self.samples) if self._point(key) is not None]
            raw = [self._point(key) for key in keys]
            self._points = list(zip((r for r, _ in raw), _monotone([c for _, c in raw],
                                                                   [len(self.samples[k]) for k in keys])))
        return self._points

    def measured(self, rows: int) -> float | None:
        """The median of the recent timings of steps of `rows` rows (bucketed: of its key's bucket)."""
        pt = self._point(self.key(rows))
        return pt[1] if pt is not None else None

    def estimate(self, rows: int) -> float | None:
        """Seconds a step of `rows` rows is expected to take; None while nothing at or below `rows`
        has been measured (no anchor for a guess)."""
        points = self.points()
        below = next(((r, c) for r, c in reversed(points) if r <= rows), None)
        if below is None:
            return None
        r0, c0 = below
        if r0 == rows:
            return c0
        above = next(((r, c) for r, c in points if r > rows), None)
        if above is not None:
            r1, c1 = above
            return c0 + (c1 - c0) * (rows - r0) / (r1 - r0)
        # The mean cost per row from the smallest measured count (one row, once a step of it is timed);
        # at least PRIOR_ROW of a one-row step, or of the one count measured, per row.
        r_first, c_first = points[0]
        prior = PRIOR_ROW * c_first / r_first
        if r0 == r_first:
            return c0 + prior * (rows - r0)
        slope = (c0 - c_first) / (r0 - r_first)
        return c0 + (max(prior, slope) if r_first == 1 else slope) * (rows - r0)


def _monotone(values: list[float], weights: list[int]) -> list[float]:
    """The non-decreasing sequence nearest to `values` in weighted least squares (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight, count]
    for v, w in zip(values, weights):
        blocks.append([v, float(w), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m1, w1, n1), (m2, w2, n2) = blocks.pop(-2), blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return [m for m, _, n in blocks for _ in range(n)]
