"""Prompt-lookup drafting for speculative decoding: guess the next tokens by finding the sequence's
last few tokens earlier in its own prompt or output and proposing what followed them there.

Where a step of a few rows costs about one row (a step bound by reading the weights), every
accepted draft is a token for free. Answers that quote their prompt (retrieved documents, code
being edited, names, paths) match often. Whether a proposal is verified is the policy's call
(spec_policy.py: the expected accepted tokens against what the extra rows cost on this machine);
this module proposes, and keeps the request's record of how its proposals fared.

The index maps each n-gram (n = 2..3) to the position just after its most recent occurrence, updated
in O(1) per token, so a lookup costs the same at any context length and a miss costs nothing more.

A proposal the policy declines becomes a shadow: the tokens the model then produces are compared
with it as they arrive (`extend`), and the outcome is recorded as a verified draft's would be, so
the record keeps learning on text where drafting does not pay, at no cost in rows. After proposals
that wholly failed (verified or shadowed) in a row, lookups pause for 0, 1, 3, 7 ... (at most
PAUSE_MAX) steps, so a reply that owes nothing to its prompt pays for few lookups too.

On by default when max_batch is 1 (config.py `speculative`). Greedy output is token for token the
same as without speculation (tests/native/test_speculative.py) because the native step computes
every row in one order whatever the step's shape (native/src/attention.h; held bit for bit by
tests/native/test_row_independence.py).
"""

from __future__ import annotations

from ..limits import K_MAX  # noqa: F401 (drafted tokens per step at most; re-exported)

N_MAX, N_MIN = 3, 2  # longest n-gram tried first: a 3-token match predicts better than a 2-token one
PAUSE_MAX = 15       # steps without lookups after many wholly failed proposals in a row


class PromptLookup:
    def __init__(self, tokens: list[int], history=None):
        self.tokens: list[int] = []
        self.index: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(N_MIN, N_MAX + 1)}
        self.history = history  # spec_policy.Acceptance: this request's record (None: nobody asks)
        self.shadow: list[int] = []  # a declined proposal being checked against the tokens that follow
        self.matched = 0             # of its tokens, those the model produced so far
        self.misses = 0   # wholly failed proposals in a row
        self.pause = 0    # lookups still to skip
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        for t in tokens:
            i = len(self.tokens)  # t's position
            # The n-gram ending just before t is followed by t: record it (the tail n-gram, ending at t,
            # is recorded only when the next token arrives, so a lookup never finds the tail itself).
            for n, table in self.index.items():
                if i >= n:
                    table[tuple(self.tokens[i - n : i])] = i
            self.tokens.append(t)
            if self.shadow:
                self._check_shadow(t)

    def propose(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the latest earlier occurrence of the tail (repeated
        when they run up to the tail itself); none while paused or while a shadow is still being checked."""
        if self.pause > 0:
            self.pause -= 1
            return []
        if limit < 1 or self.shadow:
            return []
        for n in range(N_MAX, N_MIN - 1, -1):
            if len(self.tokens) < n:
                continue
            at = self.index[n].get(tuple(self.tokens[-n:]))
            if at is not None:
                found = self.tokens[at : at + limit]
                # Short of the limit only when the match is recent: the tokens since repeat the
                # match's own continuation (a loop, a list), so the guess goes on round the loop.
                return (found * (limit // len(found) + 1))[:limit]
        return []

    def decline(self, proposal: list[int]) -> None:
        """The proposal was not verified: check it against the tokens that come (a shadow)."""
        self.shadow, self.matched = list(proposal), 0

    def feedback(self, drafted: int, accepted: int) -> None:
        """How a draft fared (verified, or shadowed): recorded; after wholly failed ones in a row,
        lookups pause for longer and longer."""
        if drafted == 0:
            return
        if self.history is not None:
            self.history.record(drafted, accepted)
        self.misses = self.misses + 1 if accepted == 0 else 0
        self.pause = min(PAUSE_MAX, 2 ** (self.misses - 1) - 1) if self.misses else 0

    def _check_shadow(self, token: int) -> None:
        if token == self.shadow[self.matched]:
            self.matched += 1
            if self.matched < len(self.shadow):
                return
        drafted, accepted = len(self.shadow), self.matched
        self.shadow, self.matched = [], 0
        self.feedback(drafted, accepted)
