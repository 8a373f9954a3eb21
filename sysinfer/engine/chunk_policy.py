"""How many prompt tokens to put beside the decoding rows of a step: the size of a prefill chunk.

A step that decodes d rows and computes a chunk of p prompt tokens costs c(d + p) (step_cost.py, a
table of this engine's own step timings by the tokens a step computes) and does d + p tokens of
work. Where c is about linear in the rows (every step beyond a few rows on the CPUs measured: the
arithmetic bounds it, issue 28), the work done per second hardly depends on p once the chunk is
more than a few rows, but the decoders wait c(d + p) for their next token: a 256-token chunk made
4 streams of SmolLM2 wait ~1 s for one token, where chunks of 64 cost the same work per second.
So, with decoders in the step, the chunk is the smallest candidate p whose work per second
(d + p) / c(d + p) is within MARGIN of the best candidate's (the largest chunk the step's budget
allows, or any smaller one that the table shows to do better): the throughput stays within MARGIN
of the best chunking this machine is measured to have, and every decoder's stall is as short as
that allows. Where small steps are cheap per row (weight-bound, below the knee of c), the rule
keeps big chunks: splitting there costs more than it gains. A split must also shorten the step by
more than MARGIN (else the decoders gain too little for the extra step the prompt then takes).

Decisions use only what was measured or extrapolated from measured steps (StepCost.estimate): with
no step measured yet, or no decoders in the step (nobody waits: the prompt goes in whole, up to the
budget), the chunk is the greedy one, as before the cost model. A chunk size never measured is
estimated from its neighbours, and once chosen it is measured, so a bad guess corrects itself.
"""

from __future__ import annotations

from .step_cost import StepCost

MARGIN = 0.05  # work per second given up at most for a shorter stall of the decoders


def candidates(limit: int) -> list[int]:
    """Chunk sizes tried, ascending: 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, ... below `limit`, and `limit`."""
    out, p = [], 1
    while p < limit:
        out.append(p)
        half = p + p // 2
        if p >= 2 and half < limit:
            out.append(half)
        p *= 2
    return sorted(set(out)) + [limit]


def chunk_size(cost: StepCost, decode_rows: int, limit: int, margin: float = MARGIN) -> int:
    """Prompt tokens to compute beside `decode_rows` decoding rows, at most `limit` (the sequence's
    pending prompt tokens, within the step's token budget)."""
    if decode_rows < 1 or limit <= 1:
        return limit
    steps = []  # [(p, seconds, work per second)] for every candidate
    for p in candidates(limit):
        seconds = cost.estimate(decode_rows + p)
        if seconds is None or seconds <= 0.0:
            return limit  # nothing measured to anchor an estimate: the step measures
        steps.append((p, seconds, (decode_rows + p) / seconds))
    best = max(rate for _, _, rate in steps)
    p, seconds, _ = next(s for s in steps if s[2] >= best / (1.0 + margin))
    # A split that shortens the decoders' wait by less than the margin is not worth its extra step.
    return p if seconds * (1.0 + margin) < steps[-1][1] else limit
