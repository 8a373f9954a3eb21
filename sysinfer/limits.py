"""Every setting's default and allowed range, in one leaf module (it imports nothing from sysinfer):
the server's config, the engine, the request models and the CLI's flags all read them here, so a
default or a bound has one home and the CLI's help and errors say what the config enforces."""

from __future__ import annotations

import math

# ---- defaults ----
DEFAULT_PORT = 7860              # the reference deployment's port
DEFAULT_BLOCK_SIZE = 16          # tokens per KV block
# Prompt tokens per step (chunked prefill). It sizes the step buffers: 256 kept the 8B server 31 MiB
# over file + KV + 300 MB; `sysinfer bench` uses 512 (BENCH_STEP_TOKENS) for prefill figures.
DEFAULT_MAX_STEP_TOKENS = 256
DEFAULT_MAX_TOKENS = 4096        # the server's reply length when a request gives none (the reference's -n 4096)
GENERATE_MAX_TOKENS = 256        # `sysinfer generate`'s, and a SamplingParams made without max_tokens
DEFAULT_MAX_QUEUE = 256          # sequences allowed to wait; beyond: 429
NUMA_MODES = ("auto", "tp", "replicate", "off")
DRAFT_POLICIES = ("cost", "always")  # when to verify drafts: where they pay (engine/spec_policy.py), or always
CHUNK_POLICIES = ("cost", "greedy")  # prompt chunks beside decoders: sized by step cost (engine/chunk_policy.py), or the budget
REASONING_FORMATS = ("deepseek", "none")  # llama.cpp's names: reasoning_content apart, or the text untouched

# ---- request bounds (OpenAI's where it has one) ----
MAX_TEMPERATURE = 2.0   # OpenAI's range is [0, 2]; one bound for requests, defaults and the CLI
MAX_LOGIT_BIAS = 100.0  # OpenAI's range for logit_bias values is [-100, 100]
MAX_LOGPROBS = 20       # top log probabilities per token (OpenAI's top_logprobs limit)
MAX_ENCODER_INPUTS = 2048  # inputs of one embedding request, documents of one rerank (OpenAI's limit for `input`)

# ---- encoders (embeddings, rerank) beside the chat model (engine/encoder_runner.py) ----
DEFAULT_ENCODER_SLICE_TOKENS = 256  # tokens per native encoder call: the longest a chat step waits for one
DEFAULT_ENCODER_SHARE = 0.25        # of the time encoders may take while chat has work (chat keeps >= ~75 %)

# ---- engine ----
K_MAX = 8  # speculative tokens drafted per sequence and step at most (sizes the grammar's mask rows too)


class Bound:
    """A numeric setting's range: low <= x <= high (or low < x when low_open)."""

    def __init__(self, low: float, high: float = math.inf, low_open: bool = False, unit: str = ""):
        self.low, self.high, self.low_open, self.unit = low, high, low_open, unit

    def describe(self) -> str:
        if self.high != math.inf:
            return f"between {self.low:g} and {self.high:g}{self.unit}"
        return f"{'more than' if self.low_open else 'at least'} {self.low:g}{self.unit}"

    def holds(self, value: float) -> bool:
        low_ok = value > self.low if self.low_open else value >= self.low
        return low_ok and value <= self.high  # NaN fails both


BOUNDS: dict[str, Bound] = {
    "port": Bound(1, 65535),
    "threads": Bound(1),
    "ctx_size": Bound(1),
    "max_batch": Bound(1),
    "max_queue": Bound(1),
    "kv_blocks": Bound(1),
    "kv_cache_gb": Bound(0, low_open=True, unit=" GiB"),
    "block_size": Bound(1),
    "max_step_tokens": Bound(1),
    "max_tokens": Bound(1),
    "max_body_bytes": Bound(1),
    "temperature": Bound(0.0, MAX_TEMPERATURE),
    "request_timeout": Bound(0, low_open=True, unit=" s"),
    "body_timeout": Bound(0, low_open=True, unit=" s"),
    "header_timeout": Bound(0, low_open=True, unit=" s"),
    "max_connections": Bound(1),
    "stall_timeout": Bound(0, low_open=True, unit=" s"),
    "drain_seconds": Bound(0, 3600, unit=" s"),
    "reasoning_budget": Bound(-1),  # -1: no limit
    "encoder_slice_tokens": Bound(1),
    "encoder_share": Bound(0, 1, low_open=True),
}


def problem(name: str, value) -> str | None:
    """What is wrong with a value of setting `name` ("must be at least 1, got 0"), or None if it is
    within BOUNDS[name] (None passes: unset)."""
    if value is None:
        return None
    bound = BOUNDS[name]
    if isinstance(value, bool) or not bound.holds(value):
        return f"must be {bound.describe()}, got {value!r}"
    return None


def check(name: str, value, label: str | None = None):
    """value, or ValueError naming `label` (the flag or variable as the user wrote it; default: the
    setting's name) when it is out of range."""
    what = problem(name, value)
    if what:
        raise ValueError(f"{label or name} {what}")
    return value
