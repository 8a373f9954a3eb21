"""The n choices of one request (OpenAI's `n`): each choice's sampling parameters, and the deltas of
all of them (they arrive interleaved on one stream) gathered into choices and one usage.

The engine runs each choice as its own sequence; choices 1..n-1 are queued once choice 0 has computed
the prompt, so they take it from the prefix cache (engine/async_engine.py `submit(more_choices=...)`).
"""

from __future__ import annotations

from dataclasses import replace

from ..engine.request_state import Delta, Usage
from ..engine.sampling import SamplingParams
from .logprob_format import LogprobFormatter
from .shaping import ChoiceResult

_SEEDS = 2**64  # the sampler's seed space: seeds wrap around in it


def choice_params(params: SamplingParams, n: int) -> list[SamplingParams]:
    """Choice i samples with seed + i (as vLLM), so a seeded request is reproducible choice by choice
    and its choices still differ; without a seed each choice draws its own fresh randomness."""
    out = [params]
    for i in range(1, n):
        seed = None if params.seed is None else params.seed + i
        if seed is not None and seed >= _SEEDS:
            seed -= _SEEDS
        out.append(replace(params, seed=seed, stop=list(params.stop), logit_bias=dict(params.logit_bias)))
    return out


class UsageTotal:
    """One usage for n choices: the prompt once (with what choice 0 found cached), the completions summed."""

    def __init__(self):
        self.prompt_tokens = self.completion_tokens = self.cached_tokens = 0
        self.accepted_prediction_tokens = self.rejected_prediction_tokens = 0  # speculative drafts, summed
        self.reasoning_tokens = 0
        self.seen = False

    def add(self, delta: Delta) -> None:
        u = delta.usage
        if u is None:
            return
        if delta.choice == 0 or not self.seen:
            self.prompt_tokens, self.cached_tokens = u.prompt_tokens, u.cached_tokens
        self.completion_tokens += u.completion_tokens
        self.accepted_prediction_tokens += u.accepted_prediction_tokens
        self.rejected_prediction_tokens += u.rejected_prediction_tokens
        self.reasoning_tokens += u.reasoning_tokens
        self.seen = True

    def usage(self) -> Usage | None:
        if not self.seen:
            return None
        return Usage(self.prompt_tokens, self.completion_tokens, self.cached_tokens,
                     self.accepted_prediction_tokens, self.rejected_prediction_tokens, self.reasoning_tokens)


class ChoiceCollector:
    """A non-streaming answer: the deltas of every choice, gathered."""

    def __init__(self, n: int, tokenizer, chat: bool, logprobs: bool):
        self.results = [ChoiceResult(i) for i in range(n)]
        self.texts: list[list[str]] = [[] for _ in range(n)]
        self.reasoning: list[list[str]] = [[] for _ in range(n)]
        self.entries: list[list] | None = [[] for _ in range(n)] if logprobs else None
        self.tokenizer, self.chat = tokenizer, chat
        self.total = UsageTotal()
        self.error: str | None = None

    def add(self, d: Delta) -> None:
        self.texts[d.choice].append(d.text)
        self.reasoning[d.choice].append(d.reasoning)
        if self.entries is not None and d.logprobs:
            self.entries[d.choice].extend(d.logprobs)
        if d.finish_reason:
            self.results[d.choice].finish_reason = d.finish_reason
            self.total.add(d)
        self.error = self.error or d.error

    def choices(self) -> list[ChoiceResult]:
        for r in self.results:
            r.text = "".join(self.texts[r.index])
            r.reasoning = "".join(self.reasoning[r.index])
            if self.entries is not None:
                r.logprobs = LogprobFormatter(self.tokenizer, self.chat).format(self.entries[r.index])
        return self.results

    @property
    def finish_reasons(self) -> list[str | None]:
        return [r.finish_reason for r in self.results]
