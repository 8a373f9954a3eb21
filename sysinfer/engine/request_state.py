"""What one request turns logits into: tokens, then text, then deltas for its client.

RequestState holds the request's sampler, detokenizer and stop matcher, so every driver of the
engine (the server's loop, `sysinfer generate`, `sysinfer bench`) samples, detokenizes and stops in
exactly one way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .detokenizer import IncrementalDetokenizer, StopChecker
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


class RequestState:
    """Per-request sampler + detokenizer + stop matcher (+ the drafter, when the engine speculates);
    the engine keeps one beside each Sequence."""

    def __init__(self, tokenizer, prompt_ids: list[int], params: SamplingParams, speculative: bool = False):
        self.params = params
        self.lookup = PromptLookup(prompt_ids) if speculative else None
        self.sampler = Sampler(params, prompt_ids)
        self.detok = IncrementalDetokenizer(tokenizer, prompt_ids)
        self.stops = StopChecker(params.stop)
        self.stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(tokenizer.stop_ids))
        self.aborted = False  # the client left; the engine ends the request at the next chance

    def sample(self, logits: np.ndarray, output_ids: list[int]) -> int:
        return self.sampler.sample(logits, output_ids)

    def verify(self, logits: np.ndarray, output_ids: list[int], draft: int,
               draft_probs: np.ndarray | None = None) -> tuple[int, bool]:
        return self.sampler.verify(logits, output_ids, draft, draft_probs)

    def draft(self, limit: int) -> list[int]:
        """Tokens to verify in the next step (none without speculation or without a match)."""
        return self.lookup.propose(limit) if self.lookup is not None else []

    def accept(self, token: int, n_output: int) -> tuple[str, str | None]:
        """Text to send for a sampled token, and the finish reason if the request ends here.
        `n_output` counts the tokens generated including this one (unless it is a stop token)."""
        if token in self.stop_ids:
            return self.final_text("stop"), "stop"
        if self.lookup is not None:
            self.lookup.extend([token])
        text, stopped = self.stops.feed(self.detok.add(token))
        if stopped:
            return text, "stop"
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
