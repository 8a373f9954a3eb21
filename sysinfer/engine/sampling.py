"""Sampling parameters and a vectorised numpy sampler (runs once per generated token).

Order of operations, as in common servers: `logit_bias` added to the raw logits, then the penalties
(repetition, then frequency and presence), temperature, then the top-k / top-p / min-p filters, then a draw from the request's own
random generator (seeded when `seed` is given, so a request is reproducible). Temperature 0 is greedy.
A grammar's mask (`allowed`) comes first of all: disallowed tokens are -inf before penalties and
temperature, so greedy is the argmax over the allowed tokens and sampling never draws a forbidden one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..limits import GENERATE_MAX_TOKENS, MAX_LOGIT_BIAS, MAX_LOGPROBS, MAX_TEMPERATURE  # noqa: F401 (re-exported)

_LOGIT_LIMIT = 1e300  # penalised logits are clipped to +-this (float64), so no inf or NaN reaches softmax


def most_likely_first(probs: np.ndarray, mass: float) -> np.ndarray:
    """Token ids by falling probability (ties by id) until their running sum reaches `mass`: exactly
    the start of a stable argsort of -probs, without sorting the whole vocabulary (a stable sort of
    49k floats took 7.6 ms per token; the nucleus is usually a few hundred tokens at most).
    probs: [n_vocab]."""
    k = min(probs.size, 256)
    while True:
        if k >= probs.size:
            ids = np.arange(probs.size)
        else:  # every id at least as likely as the k-th, ties included, so the prefix is exact
            ids = np.flatnonzero(probs >= np.partition(probs, probs.size - k)[probs.size - k])
        ids = ids[np.lexsort((ids, -probs[ids]))]
        if k >= probs.size or np.cumsum(probs[ids])[-1] >= mass:  # the same running sum the caller takes
            return ids
        k *= 8


class SamplingError(RuntimeError):
    """A token could not be sampled for this request (the request fails, the engine goes on)."""


@dataclass
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0             # 0 = off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int = GENERATE_MAX_TOKENS  # the server always passes its own (--max-tokens)
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; k >= 0: the sampled token's logprob and the k most likely
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit
    grammar: Any = None  # a compiled llguidance matcher (structured/constraints.py): the output follows it
    reasoning: bool = False  # a thinking section's text apart from the answer (engine/reasoning.py; chat)
    reasoning_budget: int | None = None  # reasoning tokens before the engine closes the section (None: no limit)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.validate()

    def validate(self) -> None:
        def bad(name: str, rule: str):
            raise ValueError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        if not 0.0 <= self.temperature <= MAX_TEMPERATURE:
            bad("temperature", f"between 0 and {MAX_TEMPERATURE:g}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            bad("top_k", "a non-negative integer (0 = off)")
        if not 0.0 < self.top_p <= 1.0:
            bad("top_p", "in (0, 1]")
        if not 0.0 <= self.min_p <= 1.0:
            bad("min_p", "in [0, 1]")
        if not 0.0 < self.repetition_penalty <= 10.0:
            bad("repetition_penalty", "in (0, 10]")
        if self.reasoning_budget is not None and (not isinstance(self.reasoning_budget, int) or self.reasoning_budget < 0):
            bad("reasoning_budget", "a non-negative integer")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            bad("frequency_penalty", "in [-2, 2]")
        if not -2.0 <= self.presence_penalty <= 2.0:
            bad("presence_penalty", "in [-2, 2]")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            bad("max_tokens", "an integer >= 1")
        if self.seed is not None and (not isinstance(self.seed, int) or not -2**63 <= self.seed < 2**64):
            bad("seed", "an integer in [-2^63, 2^64)")
        if not all(isinstance(s, str) and s for s in self.stop):
            bad("stop", "a list of non-empty strings")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or not 0 <= self.logprobs <= MAX_LOGPROBS):
            bad("logprobs", f"an integer in [0, {MAX_LOGPROBS}]")
        if not all(isinstance(t, int) and t >= 0 and -MAX_LOGIT_BIAS <= b <= MAX_LOGIT_BIAS
                   for t, b in self.logit_bias.items()):
            bad("logit_bias", f"a map of token ids to numbers in [{-MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class Sampler:
    """Per-request sampler; `sample(logits, generated_ids) -> token id`."""

    def __init__(self, params: SamplingParams, prompt_ids: list[int] | None = None):
        self.params = params
        # numpy wants a non-negative seed; -1 and 2^64 - 1 name the same 64-bit seed.
        self.rng = np.random.default_rng(None if params.seed is None else params.seed % 2**64)
        # Repetition penalty covers the prompt too (as in HF / llama.cpp); frequency and presence
        # penalties count generated tokens only (as in OpenAI's API).
        self.prompt_ids = np.asarray(prompt_ids or [], dtype=np.int64)
        self.bias_ids = np.fromiter(params.logit_bias.keys(), dtype=np.int64, count=len(params.logit_bias))
        self.bias_values = np.fromiter(params.logit_bias.values(), dtype=np.float64, count=len(params.logit_bias))

    def apply_penalties(self, logits: np.ndarray, generated: np.ndarray) -> np.ndarray:
        p = self.params
        if self.bias_ids.size:  # ids were checked against the vocabulary when the request came in
            logits[self.bias_ids] += self.bias_values
        if p.repetition_penalty != 1.0:
            seen = np.unique(np.concatenate([self.prompt_ids, generated]))
            if seen.size:
                vals = logits[seen]
                logits[seen] = np.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if (p.frequency_penalty or p.presence_penalty) and generated.size:
            ids, counts = np.unique(generated, return_counts=True)
            logits[ids] -= p.frequency_penalty * counts + p.presence_penalty
        return logits

    def filter(self, logits: np.ndarray) -> np.ndarray:
        """Logits with everything outside top-k / top-p / min-p set to -inf (temperature applied)."""
        p = self.params
        # Shift so the best logit is 0 before dividing: a tiny temperature then sends the others to
        # -inf (greedy in the limit) instead of overflowing to inf - inf = NaN.
        # top-k is decided on the logits as given: after the shift, values that differ by less than
        # the best logit's rounding step (0 and 1e-37 next to 1) would tie and both be kept.
        in_top_k = None
        if p.top_k and p.top_k < logits.size:
            in_top_k = logits >= np.partition(logits, -p.top_k)[-p.top_k]
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            logits = (logits - logits.max()) / p.temperature
        if in_top_k is not None:
            logits = np.where(in_top_k, logits, -np.inf)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        if p.min_p > 0.0:
            logits = np.where(probs >= p.min_p * probs.max(), logits, -np.inf)
        if p.top_p < 1.0:
            order = most_likely_first(probs, p.top_p)
            cumulative = np.cumsum(probs[order])
            keep = cumulative - probs[order] < p.top_p  # smallest prefix whose mass reaches top_p
            mask = np.zeros(logits.size, dtype=bool)
            mask[order[keep]] = True
            logits = np.where(mask, logits, -np.inf)
        return logits

    def _penalised(self, logits: np.ndarray, generated_ids, allowed: np.ndarray | None = None) -> np.ndarray:
        """A float64 copy of the logits (the caller's buffer is reused) with the penalties applied and
        the tokens outside `allowed` (a grammar's mask) at -inf."""
        logits = np.array(logits, dtype=np.float64)
        if not np.isfinite(logits).all():
            raise SamplingError("the model produced non-finite logits")
        generated = np.asarray(generated_ids, dtype=np.int64)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            logits = self.apply_penalties(logits, generated)
        # Extreme penalties (repetition_penalty 5e-324) overflow to +-inf; keep every logit finite so
        # the shifts below can't make NaN.
        np.clip(logits, -_LOGIT_LIMIT, _LOGIT_LIMIT, out=logits)
        return masked(logits, allowed)

    def probabilities(self, logits: np.ndarray, generated_ids, allowed: np.ndarray | None = None) -> np.ndarray:
        """The distribution a non-greedy request samples from (grammar mask, penalties, temperature, filters)."""
        logits = self.filter(self._penalised(logits, generated_ids, allowed))
        probs = np.exp(logits - logits.max())
        return probs / probs.sum()

    @property
    def _plain_greedy(self) -> bool:
        p = self.params
        return (p.greedy and p.repetition_penalty == 1.0 and not p.frequency_penalty and not p.presence_penalty
                and not p.logit_bias)

    def sample(self, logits: np.ndarray, generated_ids, allowed: np.ndarray | None = None) -> int:
        """The next token; `allowed` ([n_vocab] bool, a grammar's mask) limits it to those tokens."""
        if allowed is not None and not allowed.any():
            raise SamplingError("the output grammar allows no token here")
        if self._plain_greedy:  # argmax finds a NaN or +inf first, and we refuse it
            if allowed is not None:  # the argmax over the allowed tokens (float32, no float64 copy)
                logits = masked(logits, allowed)
            token = int(np.argmax(logits))
            if not np.isfinite(logits[token]):
                raise SamplingError("the model produced non-finite logits")
            return token
        if self.params.greedy:
            return int(np.argmax(self._penalised(logits, generated_ids, allowed)))
        probs = self.probabilities(logits, generated_ids, allowed)
        return int(self.rng.choice(probs.size, p=probs))

    def verify(self, logits: np.ndarray, generated_ids, draft: int,
               draft_probs: np.ndarray | None = None, allowed: np.ndarray | None = None) -> tuple[int, bool]:
        """Speculative sampling against a drafted token: returns (token, draft accepted). Greedy:
        accepted iff it is the argmax. Otherwise the standard acceptance rule, so tokens follow p
        exactly: accepted with probability min(1, p(draft) / q(draft)); on rejection the token is
        drawn from max(0, p - q), renormalised. q is the distribution the draft was drawn from
        (`draft_probs`, a draft model's); None means all its mass on `draft` (prompt lookup), where
        the rule reads: accept with probability p(draft), else draw from p without the draft; that
        is drawing from p as `sample` does and accepting when the draw is the draft, which is how it
        is done: the same draw from the same generator as without the draft, so a seeded request
        gives the same tokens whether or not (and however much) the engine drafted for it (the
        policy's choice depends on step timings: spec_policy.py).
        `allowed` (a grammar's mask for this row) is part of p: q may put mass on forbidden tokens,
        which p never keeps (the rule holds for any q the draft was really drawn from)."""
        if self.params.greedy:
            token = self.sample(logits, generated_ids, allowed)
            return token, token == draft
        if allowed is not None and not allowed.any():
            raise SamplingError("the output grammar allows no token here")
        probs = self.probabilities(logits, generated_ids, allowed)
        if draft_probs is None:
            token = int(self.rng.choice(probs.size, p=probs))
            return token, token == draft
        if self.rng.random() * draft_probs[draft] < probs[draft]:  # u < p/q without dividing by q
            return draft, True
        residual = np.maximum(probs - draft_probs, 0.0)
        total = residual.sum()
        # A rejection means p(draft) < q(draft), so p != q and some residual mass is left; only
        # rounding could leave none, and then p itself is the right distribution.
        residual = residual / total if total > 0 else probs
        return int(self.rng.choice(residual.size, p=residual)), False


def masked(logits: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
    """logits: [n_vocab], a copy with the tokens outside `allowed` (a grammar's mask) at -inf, in the
    logits' own dtype (the distribution a constrained row samples from); logits past the mask's end
    (a vocabulary padded beyond the tokenizer's) are never allowed. Without a mask: the logits as given."""
    if allowed is None:
        return logits
    out = np.full_like(logits, -np.inf)
    n = min(allowed.size, logits.size)
    np.copyto(out[:n], logits[:n], where=allowed[:n])
    return out
