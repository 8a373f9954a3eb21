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
from .sampling import Sampler, SamplingParams


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
    A constrained request never drafts: a drafted token the grammar forbids would need the mask of
    every draft position, so speculation is simply off for it."""

    def __init__(self, tokenizer, prompt_ids: list[int], params: SamplingParams, speculative: bool = False):
        self.params = params
        self.grammar = GrammarState(params.grammar, tokenizer.vocab_size) if params.grammar is not None else None
        self.lookup = PromptLookup(prompt_ids) if speculative and self.grammar is None else None
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
        if self.logprobs is not None and allowed is not None:  # logprobs of the masked distribution
            n = min(allowed.size, logits.size)
            logits = np.where(allowed[:n], logits[:n], np.float32(-np.inf))
        self._note_logprob(logits, token)
        return token

    def verify(self, logits: np.ndarray, output_ids: list[int], draft: int,
               draft_probs: np.ndarray | None = None) -> tuple[int, bool]:
        token, accepted = self.sampler.verify(logits, output_ids, draft, draft_probs)
        self._note_logprob(logits, token)
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

    def draft(self, limit: int) -> list[int]:
        """Tokens to verify in the next step (none without speculation or without a match)."""
        return self.lookup.propose(limit) if self.lookup is not None else []

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
