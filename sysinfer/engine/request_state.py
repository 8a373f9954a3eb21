"""What one request turns logits into: tokens, then text, then deltas for its client.

RequestState holds the request's sampler, detokenizer and stop matcher, so every driver of the
engine (the server's loop, `sysinfer generate`, `sysinfer bench`) samples, detokenizes and stops in
exactly one way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..structured.grammar_state import GrammarState
from .detokenizer import IncrementalDetokenizer, StopChecker
from .logprobs import TokenLogprob, token_logprob
from .prompt_lookup import PromptLookup
from .sampling import Sampler, SamplingParams, masked
from .spec_policy import REQUEST_DECAY, Acceptance


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    accepted_prediction_tokens: int = 0  # speculative drafts the model confirmed
    rejected_prediction_tokens: int = 0  # speculative drafts it did not (computed, not part of the output)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Delta:
    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop", "length", "abort" or "error" on the last delta
    usage: Usage | None = None        # on the last delta
    error: str | None = None          # with finish_reason "error": what went wrong, for the client
    logprobs: list[TokenLogprob] | None = None  # when asked: one per token of token_ids that is not a stop token
    choice: int = 0                   # the choice (of a request's n) this delta belongs to


class RequestState:
    """Per-request sampler + detokenizer + stop matcher (+ the drafter, when the engine speculates;
    + the grammar, when the output is constrained); the engine keeps one beside each Sequence.
    Under a grammar, drafts are cut at the first token it forbids, and where prompt lookup finds
    nothing the tokens the grammar forces are the draft."""

    def __init__(self, tokenizer, prompt_ids: list[int], params: SamplingParams, speculative: bool = False,
                 lookup_history: Acceptance | None = None):
        self.params = params
        self.grammar = GrammarState(params.grammar, tokenizer.vocab_size) if params.grammar is not None else None
        # lookup_history: the engine-wide record of lookup drafts, the prior of this request's own
        self.lookup = (PromptLookup(prompt_ids, Acceptance(REQUEST_DECAY, prior=lookup_history))
                       if speculative else None)
        self.drafted_by_lookup = False  # the last draft came from the lookup (it learns from the outcome)
        self.sampler = Sampler(params, prompt_ids)
        self.detok = IncrementalDetokenizer(tokenizer, prompt_ids)
        self.stops = StopChecker(params.stop)
        self.stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(tokenizer.stop_ids))
        self.aborted = False  # the client left; the engine ends the request at the next chance
        # Log probabilities of the tokens sampled since the last take_logprobs(); None when not asked,
        # so a request without logprobs pays one comparison per token.
        self.logprobs: list[TokenLogprob] | None = None if params.logprobs is None else []

    def sample(self, logits: np.ndarray, output_ids: list[int]) -> int:
        allowed = self.grammar.allowed() if self.grammar is not None else None  # [n_vocab] bool or None
        token = self.sampler.sample(logits, output_ids, allowed)
        self._note_logprob(masked(logits, allowed) if self.logprobs is not None else logits, token)
        return token

    def verify(self, logits: np.ndarray, output_ids: list[int], draft: int,
               draft_probs: np.ndarray | None = None) -> tuple[int, bool]:
        """Checks a drafted token against this row (see Sampler.verify); under a grammar the row is
        masked as it stands after the drafts before this one, which were accepted to get here."""
        allowed = self.grammar.allowed() if self.grammar is not None else None  # [n_vocab] bool or None
        token, accepted = self.sampler.verify(logits, output_ids, draft, draft_probs, allowed)
        self._note_logprob(masked(logits, allowed) if self.logprobs is not None else logits, token)
        return token, accepted

    def _note_logprob(self, logits: np.ndarray, token: int) -> None:
        """logits: [n_vocab], the row the token was sampled from (see logprobs.py for which distribution).
        A grammar mask (structured output) belongs in this row before it comes here, as vLLM applies its
        bitmask before its raw logprobs: the logprobs are then of the distribution actually sampled from."""
        if self.logprobs is not None and token not in self.stop_ids:  # a stop token is not part of the reply
            self.logprobs.append(token_logprob(logits, token, self.params.logprobs))

    def take_logprobs(self) -> list[TokenLogprob] | None:
        """The entries noted since the last call (None when the request did not ask for logprobs)."""
        if self.logprobs is None:
            return None
        taken, self.logprobs = self.logprobs, []
        return taken

    def draft(self, limit: int, decide) -> list[int]:
        """Tokens to verify in the next step (none without speculation or without a match). Under a
        grammar: the lookup's tokens up to the first one it forbids, else the tokens it forces.
        decide(expected) -> k (spec_policy.DraftPolicy.decide): how many of the proposal pay for
        their rows, given expected[j - 1], the accepted drafts expected among the first j (the
        lookup's record; a forced token is always accepted). A declined proposal is shadowed."""
        if self.lookup is None or limit < 1:
            return []
        tokens = self.lookup.propose(limit)
        self.drafted_by_lookup = True
        if self.grammar is not None:
            tokens = tokens[: self.grammar.valid_prefix(tokens)]
            if not tokens:
                forced = self.grammar.forced(limit)
                tokens, self.drafted_by_lookup = forced[: self.grammar.valid_prefix(forced)], False
        tokens = self.cut_after_stop(tokens)
        if not tokens:
            return []
        if self.drafted_by_lookup:
            k = decide(self.lookup.history.expected(len(tokens)))
            if k == 0:
                self.lookup.decline(tokens)
        else:
            k = decide([float(j) for j in range(1, len(tokens) + 1)])
        return tokens[:k]

    def cut_after_stop(self, tokens: list[int]) -> list[int]:
        """The draft up to its first stop token, kept: nothing after it can be part of the reply."""
        for i, token in enumerate(tokens):
            if token in self.stop_ids:
                return tokens[: i + 1]
        return tokens

    def allows_draft(self, tokens: list[int]) -> int:
        """How many of a draft's tokens the request can use in a row: up to the first the grammar
        forbids (all without a grammar), and at most through the first stop token."""
        n = self.grammar.valid_prefix(tokens) if self.grammar is not None else len(tokens)
        return len(self.cut_after_stop(tokens[:n]))

    def feedback(self, drafted: int, accepted: int) -> None:
        """How the last draft fared; the lookup adapts to its own drafts only."""
        if self.lookup is not None and self.drafted_by_lookup:
            self.lookup.feedback(drafted, accepted)

    def accept(self, token: int, n_output: int) -> tuple[str, str | None]:
        """Text to send for a sampled token, and the finish reason if the request ends here.
        `n_output` counts the tokens generated including this one (unless it is a stop token).
        A grammar that can't be extended after this token ends the reply ("stop")."""
        if self.grammar is not None:
            self.grammar.consume(token)
        if token in self.stop_ids:
            return self.final_text("stop"), "stop"
        if self.lookup is not None:
            self.lookup.extend([token])
        text, stopped = self.stops.feed(self.detok.add(token))
        if stopped:
            return text, "stop"
        if self.grammar is not None and self.grammar.done:
            return text + self.final_text("stop"), "stop"
        if n_output >= self.params.max_tokens:
            return text + self.final_text("length"), "length"
        return text, None

    def is_stop_token(self, token: int) -> bool:
        return token in self.stop_ids

    def final_text(self, reason: str) -> str:
        """What was held back (a partial character, a possible stop string's start), sent at the end of
        a request that finished normally; an aborted or failed request sends nothing more."""
        if reason not in ("stop", "length") or self.stops.stopped:
            return ""
        tail, _ = self.stops.feed(self.detok.flush())
        return tail + self.stops.flush()

