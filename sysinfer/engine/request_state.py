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
from .reasoning import ANSWER, BEFORE, INSIDE, ReasoningTracker, markers_for, starts_inside
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
    reasoning_tokens: int = 0            # of completion_tokens, in the thinking section (its tags included)

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
    reasoning: str = ""               # text of the thinking section (reasoning_content); `text` is the answer


class RequestState:
    """Per-request sampler + detokenizer + stop matcher (+ the drafter, when the engine speculates;
    + the grammar, when the output is constrained); the engine keeps one beside each Sequence.
    Under a grammar, drafts are cut at the first token it forbids, and where prompt lookup finds
    nothing the tokens the grammar forces are the draft.

    A reasoning model's thinking section (params.reasoning, reasoning.py): its text is kept apart
    (take_reasoning), the output grammar applies to the answer only (before the reply has opened a
    section, the grammar's tokens or the opening tag; inside it, nothing), and at the thinking
    budget the engine writes the closing tag itself (`forced`: tokens the engine writes next, one
    per step, the only ones the mask allows)."""

    def __init__(self, tokenizer, prompt_ids: list[int], params: SamplingParams, speculative: bool = False,
                 lookup_history: Acceptance | None = None):
        self.params = params
        self._grammar = GrammarState(params.grammar, tokenizer.vocab_size) if params.grammar is not None else None
        markers = markers_for(tokenizer) if params.reasoning else None
        self.reasoning = ReasoningTracker(markers, starts_inside(tokenizer, markers, prompt_ids)) if markers else None
        self.n_vocab = tokenizer.vocab_size if markers or self._grammar else 0  # for the mask of a forced token
        self.reasoning_text: list[str] = []  # reasoning decoded since the last take_reasoning()
        self.reasoning_tokens = 0
        self.forced: list[int] = []  # tokens the engine writes next itself (the rest of a tag)
        self._close_at_budget()
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

    @property
    def grammar(self) -> GrammarState | None:
        """The output grammar, when it applies to the next token: never inside a thinking section,
        nor while the engine writes a tag itself."""
        if self._grammar is None or self.forced or (self.reasoning is not None and self.reasoning.state == INSIDE):
            return None
        return self._grammar

    @grammar.setter
    def grammar(self, grammar: GrammarState | None) -> None:
        self._grammar = grammar

    def _allowed(self) -> np.ndarray | None:
        """[n_vocab] bool: the tokens allowed next (None: any)."""
        if self.forced:
            allowed = np.zeros(self.n_vocab, dtype=bool)
            allowed[self.forced[0]] = True
            return allowed
        grammar = self.grammar
        if grammar is None:
            return None
        allowed = grammar.allowed()
        if self.reasoning is not None and self.reasoning.state == BEFORE:  # or open a thinking section
            allowed = allowed.copy()
            allowed[self.reasoning.markers.start_ids[0]] = True
        return allowed

    def sample(self, logits: np.ndarray, output_ids: list[int]) -> int:
        allowed = self._allowed()  # [n_vocab] bool or None
        token = self.sampler.sample(logits, output_ids, allowed)
        self._note_logprob(masked(logits, allowed) if self.logprobs is not None else logits, token)
        return self._close_instead_of_stop(token)

    def _close_instead_of_stop(self, token: int) -> int:
        """A reply that would end inside its thinking section while an output constraint waits for
        the answer (response_format, guided_*, tools) closes the section instead: the answer the
        constraint promises follows (a small model tends to answer inside the section and stop)."""
        tracker = self.reasoning
        if (token in self.stop_ids and tracker is not None and tracker.state == INSIDE and self._grammar is not None
                and not self.forced):
            self.forced = list(tracker.markers.end_ids[1:])
            return tracker.markers.end_ids[0]
        return token

    def verify(self, logits: np.ndarray, output_ids: list[int], draft: int,
               draft_probs: np.ndarray | None = None) -> tuple[int, bool]:
        """Checks a drafted token against this row (see Sampler.verify); under a grammar the row is
        masked as it stands after the drafts before this one, which were accepted to get here."""
        allowed = self._allowed()  # [n_vocab] bool or None
        token, accepted = self.sampler.verify(logits, output_ids, draft, draft_probs, allowed)
        self._note_logprob(masked(logits, allowed) if self.logprobs is not None else logits, token)
        closing = self._close_instead_of_stop(token)
        return closing, accepted and closing == token  # replaced: what follows was computed after another token

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
        if self.reasoning is not None:
            if self.forced or (self.reasoning.state == BEFORE and self._grammar is not None):
                return []
            if self.reasoning.state == INSIDE and self.params.reasoning_budget is not None:
                limit = min(limit, self.params.reasoning_budget - self.reasoning_tokens - 1)
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
        """Text to send for a sampled token (the answer's; the reasoning's goes to take_reasoning),
        and the finish reason if the request ends here. `n_output` counts the tokens generated
        including this one (unless it is a stop token). A grammar that can't be extended after this
        token ends the reply ("stop")."""
        consumed = self._consume(token)
        if token in self.stop_ids:
            return self.final_text("stop"), "stop"
        if self.lookup is not None:
            self.lookup.extend([token])
        text, stopped = self.stops.feed(self._split(token, self.detok.add(token), consumed))
        if stopped:
            return text, "stop"
        if self.grammar is not None and self.grammar.done and self.reasoning_done:
            return text + self.final_text("stop"), "stop"
        if n_output >= self.params.max_tokens:
            return text + self.final_text("length"), "length"
        self._close_at_budget()
        return text, None

    def _consume(self, token: int) -> bool:
        """Moves the grammar over an answer token (True); a tag's token or a thinking one is not its."""
        if self.forced:
            if token == self.forced[0]:
                self.forced.pop(0)
            return False
        grammar = self.grammar
        if grammar is None:
            return False
        reasoning = self.reasoning
        if (reasoning is not None and reasoning.state == BEFORE and token == reasoning.markers.start_ids[0]
                and (len(reasoning.markers.start_ids) == 1 or not grammar.allowed()[token])):
            # the reply opens a section (a tag spelled in text opens one only where the grammar's text
            # could not go on with the same token): the engine writes the rest of the tag
            self.forced = list(reasoning.markers.start_ids[1:])
            return False
        grammar.consume(token)
        return True

    def _split(self, token: int, text: str, consumed: bool) -> str:
        """The answer's part of a token's text; the reasoning's part is kept for take_reasoning."""
        tracker = self.reasoning
        if tracker is None:
            return text
        if consumed and text.strip():
            tracker.lock()  # the grammar wrote it: the answer has begun, tags and all are its text
        was = tracker.state
        reasoning, answer = tracker.feed(text)
        if was == INSIDE or tracker.state == INSIDE:
            self.reasoning_tokens += 1
        if reasoning:
            self.reasoning_text.append(reasoning)
        if self._grammar is not None and tracker.state == ANSWER and not tracker.locked:
            tracker.lock()  # the section closed: the grammar's answer follows, all of it text
            if not consumed:
                answer = ""  # what the closing tag's token carried after it: the grammar never saw it
        return answer

    @property
    def reasoning_done(self) -> bool:
        return self.reasoning is None or self.reasoning.state == ANSWER

    def _close_at_budget(self) -> None:
        """At the thinking budget (reasoning tokens, tags included), the engine closes the section
        with the model's own closing tag."""
        budget, tracker = self.params.reasoning_budget, self.reasoning
        if (budget is not None and tracker is not None and tracker.state == INSIDE and not self.forced
                and self.reasoning_tokens >= budget):
            self.forced = list(tracker.markers.end_ids)

    def take_reasoning(self) -> str:
        """The reasoning text decoded since the last call."""
        taken, self.reasoning_text = "".join(self.reasoning_text), []
        return taken

    def is_stop_token(self, token: int) -> bool:
        return token in self.stop_ids

    def final_text(self, reason: str) -> str:
        """What was held back (a partial character, a possible stop string's or tag's start), sent at
        the end of a request that finished normally; an aborted or failed request sends nothing more."""
        if reason not in ("stop", "length") or self.stops.stopped:
            return ""
        text = self.detok.flush()
        if self.reasoning is not None:
            reasoning, answer = self.reasoning.feed(text)
            held_reasoning, held_answer = self.reasoning.flush()
            if reasoning + held_reasoning:
                self.reasoning_text.append(reasoning + held_reasoning)
            text = answer + held_answer
        tail, _ = self.stops.feed(text)
        return tail + self.stops.flush()
