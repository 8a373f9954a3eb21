"""Prompt-lookup drafting for speculative decoding: guess the next tokens by finding the sequence's
last few tokens earlier in its own prompt or output and proposing what followed them there.

At batch 1 a decode step is bound by reading the weights, so checking k drafted tokens in the same
step costs little more than decoding one; every accepted draft is a token for free. Answers that
quote their prompt (retrieved documents, code being edited, names, paths) match often.

The index maps each n-gram (n = 2..3) to the position just after its most recent occurrence, updated
in O(1) per token, so a lookup costs the same at any context length and a miss costs nothing more.

Off by default (`--speculative` turns it on): greedy output is token for token the same as without
speculation on short contexts (tests/native/test_speculative.py), but on prompts of 700-1,200 tokens
it was not: a verify step computes 1 + k rows where a decode step computes one, the native attention
then sums some rows in another order (suspected: the split over keys that long decodes use), and a
near-tie can go the other way. Equal summation order in the native attention comes first.
"""

from __future__ import annotations

N_MAX, N_MIN = 3, 2  # longest n-gram tried first: a 3-token match predicts better than a 2-token one
K_MAX = 8            # drafted tokens per step at most
K_START = 4


class PromptLookup:
    def __init__(self, tokens: list[int]):
        self.tokens: list[int] = []
        self.index: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(N_MIN, N_MAX + 1)}
        self.k = K_START  # adapts to how many drafts the model has been accepting
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
        """Grow k while whole drafts are accepted; shrink it to what was accepted after a rejection."""
        if drafted == 0:
            return
        self.k = min(K_MAX, self.k + 2) if accepted == drafted else max(1, accepted + 1)
