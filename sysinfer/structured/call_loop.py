"""Ending a tool-call reply that loops: the one rule of a call reply the grammar can't hold.

Allowed several calls, a small model tends to write the same call again and again (SmolLM2-135M
wrote 112 `get_weather` calls until max_tokens). The grammar bounds the number of calls
(tools.MAX_PARALLEL_CALLS), but "not a call made already" is not a context-free rule. So the tools
grammar's matcher is wrapped: it follows the reply's text, and once a complete call equals one made
before (the same name and arguments, whitespace and key order aside: tool_parser.call_key), it says
the grammar has stopped. The engine then ends the reply on that token, as at any grammar's end
("stop", which the server reports as "tool_calls"): no further token is computed, the repeated call
is never sent (the parser holds it back), and nothing of it becomes content.

The wrapper offers the matcher methods GrammarState uses; drafted tokens go through consume and
rollback like sampled ones, and `validate_tokens` cuts a draft at the token that ends the reply.
"""

from __future__ import annotations

from .tool_parser import ToolCallParser
from .tools import ToolPlan, ToolSyntax


class CallLoopMatcher:
    """An llguidance matcher (the tools grammar's) that also stops after a repeated call."""

    def __init__(self, matcher, syntax: ToolSyntax, plan: ToolPlan, token_bytes):
        self.inner = matcher
        self.syntax, self.plan = syntax, plan
        self.token_bytes = token_bytes  # token id -> the bytes it stands for (the tokenizer's)
        self.text = bytearray()         # the reply's bytes consumed so far
        self.ends: list[int] = []       # len(text) after each consumed token (for rollback)
        self.repeated_at: int | None = None  # tokens consumed when a call repeated (None: none has)

    def deep_copy(self) -> CallLoopMatcher:
        copy = CallLoopMatcher(self.inner.deep_copy(), self.syntax, self.plan, self.token_bytes)
        copy.text, copy.ends, copy.repeated_at = bytearray(self.text), list(self.ends), self.repeated_at
        return copy

    # ---- the rule ----
    def _repeats(self) -> bool:
        """Whether the text so far holds a complete call equal to an earlier one. Only a closing
        brace can complete a call, so the caller asks only after a token that has one."""
        parser = ToolCallParser(self.syntax, self.plan)
        parser.feed(self.text.decode("utf-8", errors="replace"))  # an unfinished character: only at the end
        return parser.repeated

    def _advance(self, token: int) -> None:
        piece = self.token_bytes(token)
        self.text += piece
        self.ends.append(len(self.text))
        if self.repeated_at is None and b"}" in piece and self._repeats():
            self.repeated_at = len(self.ends)

    def _back(self, n: int) -> None:
        del self.ends[len(self.ends) - n:]
        del self.text[self.ends[-1] if self.ends else 0:]
        if self.repeated_at is not None and self.repeated_at > len(self.ends):
            self.repeated_at = None

    # ---- the matcher's methods GrammarState uses ----
    def consume_token(self, token: int) -> bool:
        if not self.inner.consume_token(token):
            return False
        self._advance(token)
        return True

    def rollback(self, n: int) -> bool:
        if not self.inner.rollback(n):
            return False
        self._back(n)
        return True

    def is_stopped(self) -> bool:
        return self.repeated_at is not None or self.inner.is_stopped()

    def validate_tokens(self, tokens: list[int]) -> int:
        """How many of `tokens` the grammar allows in a row, up to and including one that ends the
        reply with a repeated call (nothing after it can be part of the reply)."""
        n = self.inner.validate_tokens(tokens)
        if self.repeated_at is not None:
            return 0
        for i, token in enumerate(tokens[:n]):
            self._advance(token)
            if self.repeated_at is not None:
                n = i + 1
                self._back(i + 1)
                break
        else:
            self._back(n)
        return n

    def unsafe_compute_mask_ptr(self, ptr: int, size: int) -> None:
        self.inner.unsafe_compute_mask_ptr(ptr, size)

    def compute_ff_tokens(self) -> list[int]:
        return self.inner.compute_ff_tokens()

    def is_error(self) -> bool:
        return self.inner.is_error()

    def get_error(self) -> str:
        return self.inner.get_error()

    def is_accepting(self) -> bool:
        return self.repeated_at is not None or self.inner.is_accepting()


def guard_calls(matcher, syntax: ToolSyntax, plan: ToolPlan, tokenizer):
    """The tools grammar's matcher, wrapped to end the reply at a repeated call where the request
    allows several calls (one call can't repeat: the grammar ends the reply after it)."""
    parallel = syntax.parallel_calls if plan.parallel is None else plan.parallel
    return CallLoopMatcher(matcher, syntax, plan, tokenizer.token_bytes) if parallel else matcher
