"""When to speculate: draft k tokens only when the tokens they are expected to add pay for their rows.

A step that verifies k drafts computes k more rows; it gives 1 + (accepted drafts) tokens. With
c(n) the cost of a step of n rows (step_cost.py, learned from this engine's own steps) and E_k the
expected number of accepted drafts among k, drafting k beats plain decoding when

    (T + E_k) / (c(n + k) + k * d)  >  T / c(n)

where n and T are the rows and tokens the step already holds (one each at batch 1) and d is what a
draft token costs to make (0 for prompt lookup; a draft model's one-token step). The policy picks
the k with the best expected tokens per second and drafts only when that beats plain decoding by
MARGIN; otherwise the sequence decodes plainly, at the cost of this arithmetic (a few microseconds).

E_k comes from the drafts' own history (Acceptance): per draft position i, how often a draft that
got to i (its first i - 1 tokens accepted) had token i accepted, decayed so it follows the text
(a reply starts or stops quoting), per request and, as every request's prior, engine-wide. Prompt
lookup also learns while it does not draft: its declined proposal is kept as a "shadow" and checked
against the tokens the model then produces (prompt_lookup.py), which for a deterministic draft is
exactly the acceptance the verify step would have had (greedy: equality; sampled: the model draws
the drafted token with the probability the acceptance rule accepts it), so a reply that begins to
quote its prompt is noticed without paying for a single extra row.

Output never depends on the policy: drafts are verified as before (greedy output token for token
that of plain decoding; sampled output keeps its distribution); only which steps carry drafts does.
`always` (draft_policy="always") verifies every draft found: for tests and measurement.
"""

from __future__ import annotations

from ..limits import DRAFT_POLICIES as POLICIES
from .prompt_lookup import K_MAX
from .step_cost import StepCost

REQUEST_DECAY = 0.8   # per resolved draft: a request's history follows its text (quoting starts, stops)
SHARED_DECAY = 0.98   # the engine-wide history, every new request's prior
PRIOR_WEIGHT = 2.0    # drafts' worth of the prior in an estimate (a request's first drafts lean on it)
START_RATE = 0.5      # before any draft anywhere: P(draft i accepted | the drafts before it were)
MARGIN = 0.05         # draft only for an expected gain of at least 5 % in tokens per second


class Acceptance:
    """Decayed counts, per draft position, of drafts that reached it and of those accepted there."""

    def __init__(self, decay: float, prior: "Acceptance | None" = None):
        self.decay, self.prior = decay, prior
        self.reached = [0.0] * K_MAX   # [K_MAX] drafts whose tokens before position i were all accepted
        self.accepted = [0.0] * K_MAX  # [K_MAX] of them, accepted at position i

    def record(self, drafted: int, accepted: int) -> None:
        if drafted < 1:
            return
        d = self.decay
        for i in range(K_MAX):
            self.reached[i] = self.reached[i] * d + (i < drafted and i <= accepted)
            self.accepted[i] = self.accepted[i] * d + (i < accepted)
        if self.prior is not None:
            self.prior.record(drafted, accepted)

    def rates(self) -> list[float]:
        """[K_MAX] P(the draft at position i is accepted | those before it were). Where a position has
        little record, its estimate leans on the prior's, or on this record's rate at the position
        before when that is higher: a draft that is right so far tends to stay right (a quote goes
        on), and a position the drafts never reach must look worth reaching to be tried at all."""
        prior = self.prior.rates() if self.prior is not None else [START_RATE] * K_MAX
        out: list[float] = []
        for a, n, p in zip(self.accepted, self.reached, prior):
            lean = max(p, out[-1]) if out else p
            out.append((a + PRIOR_WEIGHT * lean) / (n + PRIOR_WEIGHT))
        return out

    def expected(self, k: int) -> list[float]:
        """[min(k, K_MAX)] expected accepted drafts among the first j drafted, for j = 1..k."""
        out, run, total = [], 1.0, 0.0
        for rate in self.rates()[:k]:
            run *= rate
            total += run
            out.append(total)
        return out


class DraftPolicy:
    """The engine's drafting decisions for one step plan at a time (begin, then decide per sequence)."""

    def __init__(self, cost: StepCost | None = None, policy: str = "cost"):
        if policy not in POLICIES:
            raise ValueError(f"draft policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.cost = cost if cost is not None else StepCost()
        self.always = policy == "always"
        self.lookup_history = Acceptance(SHARED_DECAY)  # prompt lookup's drafts, every request
        self.model_history = Acceptance(SHARED_DECAY)   # a draft model's
        self.rows = 0     # rows the step being planned holds so far
        self.tokens = 0.0  # tokens it is expected to give

    def begin(self, decoding: int) -> None:
        """A new step plan: `decoding` sequences decode one row each (before any drafts)."""
        self.rows, self.tokens = decoding, float(decoding)

    def decide(self, expected: list[float], draft_cost: float = 0.0) -> int:
        """How many of the drafts to verify (0..len(expected)); expected[j - 1] = E_j. draft_cost:
        seconds to make each draft token. The step's rows and tokens grow by the choice."""
        if not expected:
            return 0
        if self.always:
            return self.take_all(expected)
        k = self._best(expected, draft_cost)
        if k:
            self.rows += k
            self.tokens += expected[k - 1]
        return k

    def take_all(self, expected: list[float], draft_cost: float = 0.0) -> int:
        """Every draft (as `always`), whatever the costs."""
        k = len(expected)
        if k:
            self.rows += k
            self.tokens += expected[k - 1]
        return k

    def _best(self, expected: list[float], draft_cost: float) -> int:
        base = self.cost.estimate(max(self.rows, 1))
        if base is None or base <= 0.0:
            return 0  # no plain step measured yet: this one measures it
        tokens = max(self.tokens, 1.0)
        best_k, best = 0, tokens / base * (1.0 + MARGIN)
        for k, gain in enumerate(expected, 1):
            rate = (tokens + gain) / (self.cost.estimate(self.rows + k) + k * draft_cost)
            if rate > best:
                best_k, best = k, rate
        return best_k

    def observe(self, rows: int, seconds: float) -> None:
        """A step of `rows` decode rows took `seconds` in its native call."""
        self.cost.observe(rows, seconds)
