"""Prompt-lookup drafting for speculative decoding: guess the next tokens by finding the sequence's
last few tokens earlier in its own prompt or output and proposing what followed them there.

At batch 1 a decode step is bound by reading the weights, so checking k drafted tokens in the same
step costs little more than decoding one; every accepted draft is a token for free. Answers that
quote their prompt (retrieved documents, code being edited, names, paths) match often.

The index maps each n-gram (n = 2..3) to the position just after its most recent occurrence, updated
in O(1) per token, so a lookup costs the same at any context length and a miss costs nothing more.

On by default when max_batch is 1 (config.py `speculative`). Greedy output is token for token the
same as without speculation (tests/native/test_speculative.py) because the native step computes
every row in one order whatever the step's shape (native/src/attention.h; held bit for bit by
tests/native/test_row_independence.py).

Cost control: k grows while whole drafts are accepted and shrinks to what was accepted; after drafts
that were wholly rejected, lookups pause for 0, 1, 3, 7 ... (at most PAUSE_MAX) steps, so a reply
that owes nothing to its prompt pays at most a dictionary lookup per step and a rare 2-row step.
"""

from __future__ import annotations

from ..limits import K_MAX  # noqa: F401 (drafted tokens per step at most; re-exported)

N_MAX, N_MIN = 3, 2  # longest n-gram tried first: a 3-token match predicts better than a 2-token one
K_START = 4
PAUSE_MAX = 15       # steps without drafting after many wholly rejected drafts in a row


class PromptLookup:
    def __init__(self, tokens: list[int]):
        self.tokens: list[int] = []
        self.index: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(N_MIN, N_MAX + 1)}
        self.k = K_START  # adapts to how many drafts the model has been accepting
        self.misses = 0   # wholly rejected drafts in a row
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

    def propose(self, limit: int) -> list[int]:
        """Up to min(k, limit) tokens that followed the latest earlier occurrence of the tail."""
        k = min(self.k, limit)
        if self.pause > 0:
            self.pause -= 1
            return []
        if k < 1:
            return []
        for n in range(N_MAX, N_MIN - 1, -1):
            if len(self.tokens) < n:
                continue
            at = self.index[n].get(tuple(self.tokens[-n:]))
            if at is not None:
                return self.tokens[at : at + k]
        return []

    def feedback(self, drafted: int, accepted: int) -> None:
        """Grow k while whole drafts are accepted; shrink it to what was accepted after a rejection;
        pause drafting for longer and longer after wholly rejected drafts in a row."""
        if drafted == 0:
            return
        self.k = min(K_MAX, self.k + 2) if accepted == drafted else max(1, accepted + 1)
        self.misses = self.misses + 1 if accepted == 0 else 0
        self.pause = min(PAUSE_MAX, 2 ** (self.misses - 1) - 1) if self.misses else 0
