"""Log probabilities of sampled tokens, for requests that ask for them (`logprobs` / `top_logprobs`).

Which distribution: the log-softmax of the model's own logits for that position, before `logit_bias`,
the repetition / frequency / presence penalties, temperature and the top-k / top-p / min-p filters.
That is vLLM's documented default (`logprobs_mode="raw_logprobs"`) and what OpenAI returns (its
logprobs do not move with temperature), so the same request gives the same numbers whatever its
sampling settings; a greedy token is the top-1 entry. When a grammar masks tokens (structured
output), the mask comes first: a token the grammar forbids is not in the distribution sampled from.

Cost: nothing unless asked (the engine never calls this); otherwise one pass over the row for the
log-sum-exp and, for top_logprobs k, a partial sort (argpartition) plus a sort of the k found.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat top_logprobs; also ours for the legacy integer


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # the k most likely (token id, logprob), best first


def token_logprob(row: np.ndarray, token_id: int, k: int) -> TokenLogprob:
    """row: [n_vocab] logits (float32) of one position; token_id: the token sampled from it."""
    peak = float(row.max())
    # log-sum-exp shifted by the maximum; the sum in float64 so 128k small terms don't lose digits
    log_total = peak + math.log(float(np.exp(row - peak).sum(dtype=np.float64)))
    top: tuple[tuple[int, float], ...] = ()
    if k > 0:
        k = min(k, row.size)
        best = np.argpartition(row, row.size - k)[row.size - k:]  # [k] ids, unordered
        best = best[np.lexsort((best, -row[best]))]               # most likely first, ties by id
        # a token a grammar masked (-inf) has no logprob to give (and -inf is not JSON): left out
        top = tuple((int(i), float(row[i]) - log_total) for i in best if np.isfinite(row[i]))
    return TokenLogprob(int(token_id), float(row[token_id]) - log_total, top)
