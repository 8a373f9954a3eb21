"""Server configuration: one validated dataclass, from CLI flags or SYSINFER_* environment variables.

Every field has one CLI flag and one environment variable (SYSINFER_ + the field name in capitals),
e.g. --max-batch / SYSINFER_MAX_BATCH. The CLI flag wins.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace
from typing import Any

from . import limits
from .limits import (DEFAULT_BLOCK_SIZE, DEFAULT_ENCODER_SHARE, DEFAULT_ENCODER_SLICE_TOKENS, DEFAULT_MAX_QUEUE, DEFAULT_MAX_STEP_TOKENS, DEFAULT_MAX_TOKENS, DEFAULT_PORT,
                     CHUNK_POLICIES, DRAFT_POLICIES, NUMA_MODES, REASONING_FORMATS)

__all__ = ["EncoderConfig", "EngineConfig", "ServerConfig", "DEFAULT_BLOCK_SIZE", "DEFAULT_MAX_STEP_TOKENS", "DEFAULT_PORT"]

# The draft model's two conditions, checked at start-up (ServerConfig.validate) and by the engine.
DRAFT_NEEDS_SPECULATION = "draft_model needs speculative decoding"
DRAFT_WITH_REPLICATE = "draft_model is not supported with numa replicate (each lane would need its own copy)"


@dataclass(frozen=True)
class EngineConfig:
    """What the engine needs of the settings, built once from ServerConfig (engine_config()) and
    passed whole: AsyncEngine -> make_core -> Lanes -> LLMEngine. Tests and tools build one directly
    (or pass its fields as keywords: `AsyncEngine(model, tok, max_batch=4)`)."""
    max_batch: int = 1                  # sequences decoded together
    max_step_tokens: int | None = None  # tokens per step; None: the model's (what its buffers were sized for)
    enable_prefix_cache: bool = True
    speculative: bool = False           # draft and verify (resolved: ServerConfig.speculation)
    lookup_first: bool = True           # with a draft model: prompt lookup first
    draft_policy: str = "cost"          # cost: draft where it pays (engine/spec_policy.py); always: every draft found
    chunk_policy: str = "greedy"        # greedy: prompt chunks as big as the step allows; cost: sized by step cost (chunk_policy.py)
    max_queue: int = DEFAULT_MAX_QUEUE  # sequences allowed to wait
    request_timeout: float = math.inf   # seconds one request may live, queued and running
    stall_timeout: float = math.inf     # seconds a streaming client may leave its deltas unread

    def __post_init__(self):
        for name in ("max_batch", "max_step_tokens", "max_queue", "request_timeout", "stall_timeout"):
            limits.check(name, getattr(self, name))
        if self.draft_policy not in DRAFT_POLICIES:
            raise ValueError(f"draft_policy must be one of {', '.join(DRAFT_POLICIES)}, got {self.draft_policy!r}")
        if self.chunk_policy not in CHUNK_POLICIES:
            raise ValueError(f"chunk_policy must be one of {', '.join(CHUNK_POLICIES)}, got {self.chunk_policy!r}")

    @classmethod
    def with_fields(cls, config: "EngineConfig | None", fields: dict[str, Any]) -> "EngineConfig":
        """config (default: the defaults) with some fields replaced; an unknown name is a TypeError."""
        return replace(config or cls(), **fields) if fields else (config or cls())


@dataclass(frozen=True)
class EncoderConfig:
    """How encoder work (embeddings, rerank) shares the cores with chat (engine/encoder_runner.py)."""
    slice_tokens: int = DEFAULT_ENCODER_SLICE_TOKENS  # tokens per native call: the longest a chat step waits
    share: float = DEFAULT_ENCODER_SHARE              # of the time encoders may take while chat has work

    def __post_init__(self):
        limits.check("encoder_slice_tokens", self.slice_tokens)
        limits.check("encoder_share", self.share)


@dataclass
class ServerConfig:
    model: str | None = None          # GGUF path; None = the bundled SmolLM2-135M-Instruct
    model_name: str | None = None     # the id /v1/models reports (default: the file's name)
    host: str = "127.0.0.1"           # loopback, as llama.cpp and Ollama; containers and units pass 0.0.0.0
    port: int = DEFAULT_PORT
    threads: int | None = None
    ctx_size: int = 4096
    max_batch: int = 1                # single batch by default, as the reference deployment
    max_queue: int = DEFAULT_MAX_QUEUE
    kv_blocks: int | None = None
    kv_cache_gb: float | None = None
    block_size: int = DEFAULT_BLOCK_SIZE
    max_step_tokens: int = DEFAULT_MAX_STEP_TOKENS
    prefix_cache: bool = True
    speculative: str = "auto"         # prompt-lookup speculative decoding: on | off | auto (on when max_batch is 1)
    draft_model: str | None = None    # GGUF of a small model with the same vocabulary: drafts where prompt lookup finds none
    draft_lookup: bool = True         # with draft_model: prompt lookup first (False: the model drafts every time)
    draft_policy: str = "cost"        # cost: draft only where accepted drafts pay for their rows (timed as it runs); always
    chunk_policy: str = "greedy"      # greedy: prompt chunks as big as a step allows; cost: beside decoders, sized by measured step cost
    temperature: float = 0.0          # default when a request gives none (the reference's -t 0.0)
    max_tokens: int = DEFAULT_MAX_TOKENS  # default max tokens per reply (the reference's -n 4096)
    reasoning_format: str = "deepseek"  # a thinking section as reasoning_content (deepseek) or left in the text (none)
    reasoning_budget: int = -1        # reasoning tokens before the engine closes the section (-1: no limit)
    api_key: str | None = None
    max_body_bytes: int = 4 * 1024 * 1024
    request_timeout: float = 1800.0   # seconds one request may run (queued + generating); then it ends
    body_timeout: float = 30.0        # seconds a client may take to send its request body
    header_timeout: float = 10.0      # seconds a client may take to send a request's headers (connections.py)
    max_connections: int = 512        # open HTTP connections; past it a new one gets 503 and is closed
    stall_timeout: float = 60.0       # seconds a streaming client may leave tokens unread before it is dropped
    drain_seconds: float = 8.0        # on SIGTERM, seconds running requests may go on before they are ended
    numa: str | None = None           # auto | tp | replicate | off (sysinfer/topology.py); None = auto
    embedding_model: str | None = None  # GGUF of an embedding model served beside the chat model (/v1/embeddings)
    embedding_model_name: str | None = None  # its id (default: the file's name)
    rerank_model: str | None = None   # GGUF of a reranker (/v1/rerank)
    rerank_model_name: str | None = None
    encoder_slice_tokens: int = DEFAULT_ENCODER_SLICE_TOKENS  # encoder tokens per native call (chat waits at most one)
    encoder_share: float = DEFAULT_ENCODER_SHARE  # of the time encoders may take while chat streams run

    def validate(self) -> "ServerConfig":
        for name in limits.BOUNDS:  # the ranges the CLI's flags check too (limits.py)
            limits.check(name, getattr(self, name))
        self.speculative = _speculative_mode(self.speculative)
        if self.draft_policy not in DRAFT_POLICIES:
            raise ValueError(f"draft_policy must be one of {', '.join(DRAFT_POLICIES)}, got {self.draft_policy!r}")
        if self.chunk_policy not in CHUNK_POLICIES:
            raise ValueError(f"chunk_policy must be one of {', '.join(CHUNK_POLICIES)}, got {self.chunk_policy!r}")
        if self.reasoning_format not in REASONING_FORMATS:
            raise ValueError(f"reasoning_format must be deepseek or none, got {self.reasoning_format!r}")
        if self.numa is not None and self.numa not in NUMA_MODES:
            raise ValueError(f"numa must be auto, tp, replicate or off, got {self.numa!r}")
        if self.draft_model is not None:
            if not self.speculation:
                raise ValueError(f"{DRAFT_NEEDS_SPECULATION}: it is off "
                                 + ("(--no-speculative)" if self.speculative == "off" else
                                    f"at max_batch {self.max_batch} unless --speculative is given"))
            if self.numa == "replicate":
                raise ValueError(DRAFT_WITH_REPLICATE)
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key is empty: give a key, or leave it out to serve without one")
        return self

    def engine_config(self) -> EngineConfig:
        return EngineConfig(max_batch=self.max_batch, max_step_tokens=self.max_step_tokens,
                            enable_prefix_cache=self.prefix_cache, speculative=self.speculation,
                            lookup_first=self.draft_lookup, draft_policy=self.draft_policy, max_queue=self.max_queue,
                            chunk_policy=self.chunk_policy,
                            request_timeout=self.request_timeout, stall_timeout=self.stall_timeout)

    def encoder_config(self) -> EncoderConfig:
        return EncoderConfig(slice_tokens=self.encoder_slice_tokens, share=self.encoder_share)

    @property
    def serves_chat(self) -> bool:
        """A chat model is served unless only encoders were named: `--embedding-model E.gguf` alone
        serves embeddings only (no chat model; without any model the bundled SmolLM2 is served)."""
        return self.model is not None or not (self.embedding_model or self.rerank_model)

    @property
    def speculation(self) -> bool:
        """Whether the engine drafts and verifies: auto means on at max_batch 1, where a step is bound
        by reading the weights and verifying drafts costs about one decode step."""
        return self.speculative == "on" or (self.speculative == "auto" and self.max_batch == 1)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> "ServerConfig":
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get("SYSINFER_" + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, f.type, raw)
            if f.name in limits.BOUNDS and overrides.get(f.name) is None:  # named as the user set it
                limits.check(f.name, values[f.name], "SYSINFER_" + f.name.upper())
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values).validate()


def _speculative_mode(value: Any) -> str:
    """on | off | auto; true/false (and their spellings) mean on/off."""
    text = str(value).lower()
    if text in ("on", "off", "auto"):
        return text
    if text in ("1", "true", "yes"):
        return "on"
    if text in ("0", "false", "no"):
        return "off"
    raise ValueError(f"speculative must be on, off or auto, got {value!r}")


def _parse(name: str, kind: Any, raw: str) -> Any:
    kind = str(kind)
    try:
        if "bool" in kind:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if "int" in kind:
            return int(raw)
        if "float" in kind:
            return float(raw)
        return raw
    except ValueError:
        raise ValueError(f"SYSINFER_{name.upper()}={raw!r} is not a valid {kind}") from None


def kv_block_bytes(hp, block_size: int) -> int:
    """Bytes of one KV block across all layers (K and V, fp16)."""
    return 2 * hp.n_layer * hp.n_head_kv * hp.head_dim * block_size * 2


def available_memory_bytes(field: str = "MemAvailable") -> int | None:
    """A /proc/meminfo field in bytes (MemTotal: all of the RAM), None where there is none."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def draft_kv_blocks(cfg: ServerConfig, hp, n_ctx: int, extra_tokens: int, spoken_for: int) -> int:
    """The draft model's KV cache (hp: the draft's): max_batch full contexts of n_ctx tokens (plus
    extra_tokens drafted past the end), never more than half of the memory available now, before
    loading, less what is spoken for (both files and the target's KV cache). Not --kv-blocks or
    --kv-cache-gb: those size the target's cache."""
    per_block = kv_block_bytes(hp, cfg.block_size)
    blocks = math.ceil((n_ctx + extra_tokens) / cfg.block_size) * cfg.max_batch
    available = available_memory_bytes()
    if available is not None:
        blocks = min(blocks, max(1, int((available - spoken_for) * 0.5 // per_block)))
    return blocks


def kv_blocks_for(cfg: ServerConfig, hp, weight_bytes: int, copies: int = 1) -> int:
    """--kv-blocks, else --kv-cache-gb, else enough for max_batch full contexts; never more than
    half of the memory available after the weights (weight_bytes: about the file's size). copies:
    how many copies of the weights and of this KV cache the process holds (--numa replicate: one
    per node); the result is per copy."""
    per_block = kv_block_bytes(hp, cfg.block_size)
    if cfg.kv_blocks:
        blocks = cfg.kv_blocks
    elif cfg.kv_cache_gb:
        blocks = int(cfg.kv_cache_gb * 2**30 // per_block)
    else:
        blocks = math.ceil(cfg.ctx_size / cfg.block_size) * cfg.max_batch + 1
    available = available_memory_bytes()
    if available is not None:
        cap = max(1, int((available - copies * weight_bytes) * 0.5 // (copies * per_block)))
        if blocks > cap and not cfg.kv_blocks:
            blocks = cap
    return max(blocks, math.ceil(min(cfg.ctx_size, 256) / cfg.block_size))
