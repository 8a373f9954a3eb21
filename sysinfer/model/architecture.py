"""Model architectures: hyperparameters from GGUF metadata and the tensors each one needs.

Each architecture is one `Architecture` entry: how it differs from llama (RoPE style, extra tensors
per layer). description.py turns hyperparameters and tensors into the native core's typed
description (docs/architecture.md, "Adding an architecture").

Supported: `llama` (Llama 2/3/3.1, SmolLM2, deepseek-llm, any llama-architecture model: RoPE, GQA,
SwiGLU, tied output when `output.weight` is absent), `baichuan` (Baichuan 2: RoPE for 7B; ALiBi for
the 40-layer 13B, which is how existing Baichuan2-13B files are recognised, as llama.cpp does),
`qwen2` (Qwen2, Qwen2.5, DeepSeek-R1-Distill-Qwen: Q/K/V biases, NEOX RoPE) and `qwen3` (per-head
RMS norms of q and k, NEOX RoPE, head size from attention.key_length) and `qwen3moe` (Qwen3's
attention, a mixture of SwiGLU experts in place of the FFN: Qwen3-30B-A3B, 235B-A22B).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from .gguf_header import describe
from .rope_scaling import Yarn, rope_scaling_from_metadata

BAICHUAN_ALIBI_BLOCK_COUNT = 40


@dataclass(frozen=True)
class Architecture:
    """What an architecture changes in the llama graph (the defaults are llama)."""

    rope_style: str = "pairs"  # "pairs": rotate dims (2i, 2i+1) (llama); "halves": (i, i + rope_dim/2) (NEOX)
    qkv_bias: bool = False     # blk.N.attn_{q,k,v}.bias added after the projections
    qk_norm: bool = False      # blk.N.attn_{q,k}_norm: RMS norm of each q and k head before RoPE
    moe: bool = False          # routed SwiGLU experts (ffn_gate_inp, ffn_{gate,up,down}_exps) in place of the FFN


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture(),
    "baichuan": Architecture(),  # ALiBi when it has 40 layers (see hparams_from_metadata)
    "qwen2": Architecture(rope_style="halves", qkv_bias=True),
    "qwen3": Architecture(rope_style="halves", qk_norm=True),
    "qwen3moe": Architecture(rope_style="halves", qk_norm=True, moe=True),
}
SUPPORTED_ARCHITECTURES = tuple(ARCHITECTURES)


@dataclass(frozen=True)
class ModelHParams:
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    rms_eps: float
    use_rope: bool
    rope_dim: int
    rope_base: float
    alibi_max_bias: float = 8.0
    rope_style: str = "pairs"
    qkv_bias: bool = False
    qk_norm: bool = False
    n_expert: int = 0       # MoE: experts per layer (0: a dense FFN); n_ff is then one expert's size
    n_expert_used: int = 0  # MoE: experts each token is routed to
    yarn: Yarn | None = None  # YaRN RoPE scaling (rope_scaling.py), or None

    def int_fields(self) -> dict[str, int]:
        """The integer hyperparameters (the native core reads them as C ints)."""
        return {k: v for k, v in asdict(self).items() if isinstance(v, int) and not isinstance(v, bool)}


# Upper bounds on hyperparameters read from a file (far above any real model; every value must
# also fit the native core's int32). The tensors must then match them, within the file's bytes.
MAX_HPARAM = {
    "block_count": 1024,
    "embedding_length": 1 << 17,
    "attention.head_count": 1 << 12,
    "attention.head_count_kv": 1 << 12,
    "attention.key_length": 1 << 14,
    "attention.value_length": 1 << 14,
    "feed_forward_length": 1 << 20,
    "context_length": (1 << 31) - 1,
    "vocab_size": 1 << 24,
    "rope.dimension_count": 1 << 14,
    "expert_count": 1 << 12,
    "expert_used_count": 1 << 12,
    "expert_feed_forward_length": 1 << 20,
}


def _require(meta: dict[str, Any], key: str, kind: type) -> Any:
    if key not in meta:
        raise KeyError(f"missing metadata key {key!r}")
    value = meta[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"metadata key {key!r} must be an integer, got {describe(value)}")
    if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"metadata key {key!r} must be a number, got {describe(value)}")
    return value


def _positive(key: str, value: int, limit: int) -> int:
    if not 0 < value <= limit:
        raise ValueError(f"metadata key {key!r} = {value} is out of range (1 to {limit})")
    return value


def _finite(key: str, value: float, low: float, high: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and low < value < high):
        raise ValueError(f"metadata key {key!r} = {value!r} is out of range ({low:g} to {high:g}, exclusive)")
    return value


def _int_reader(meta: dict[str, Any], arch: str):
    """get_int(name, default=None): metadata key `{arch}.{name}` as an int in 1..MAX_HPARAM[name], or the
    default where the key is absent (required where no default is given)."""
    def get_int(name: str, default: int | None = None) -> int:
        key = f"{arch}.{name}"
        if default is not None and key not in meta:
            return default
        return _positive(key, int(_require(meta, key, int)), MAX_HPARAM[name])
    return get_int


def _layer_shape(get_int) -> tuple[int, int, int, int]:
    """(n_layer, n_embd, n_head, n_head_kv), decoders and encoders alike; head_count_kv defaults to head_count."""
    n_layer, n_embd, n_head = get_int("block_count"), get_int("embedding_length"), get_int("attention.head_count")
    return n_layer, n_embd, n_head, get_int("attention.head_count_kv", n_head)


def hparams_from_metadata(meta: dict[str, Any]) -> ModelHParams:
    arch = meta.get("general.architecture")
    if arch is None:
        raise KeyError("missing metadata key 'general.architecture'")
    if not isinstance(arch, str):
        raise ValueError(f"metadata key 'general.architecture' must be a string, got {describe(arch)}")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"architecture {describe(arch)} (general.architecture) is not supported; supported: {SUPPORTED_ARCHITECTURES}")

    get_int = _int_reader(meta, arch)
    n_layer, n_embd, n_head, n_head_kv = _layer_shape(get_int)
    if n_head % n_head_kv:
        raise ValueError(f"{arch}.attention.head_count ({n_head}) is not a multiple of head_count_kv ({n_head_kv})")
    if n_embd % n_head and f"{arch}.attention.key_length" not in meta:
        raise ValueError(f"{arch}.embedding_length ({n_embd}) is not a multiple of attention.head_count ({n_head})")
    head_dim = get_int("attention.key_length", max(1, n_embd // n_head))
    value_dim = get_int("attention.value_length", head_dim)
    if value_dim != head_dim:
        raise ValueError(f"{arch}.attention.value_length ({value_dim}) differs from attention.key_length ({head_dim}): "
                         "heads whose values and keys differ in size are not supported")
    spec = ARCHITECTURES[arch]
    n_expert = n_expert_used = 0
    if spec.moe:
        n_expert, n_expert_used = get_int("expert_count"), get_int("expert_used_count")
        if n_expert_used > n_expert:
            raise ValueError(f"{arch}.expert_used_count ({n_expert_used}) exceeds expert_count ({n_expert})")
        # One expert's FFN size; llama.cpp falls back to feed_forward_length / expert_used_count.
        if f"{arch}.expert_feed_forward_length" in meta:
            n_ff = get_int("expert_feed_forward_length")
        else:
            n_ff = max(1, get_int("feed_forward_length") // n_expert_used)
    else:
        n_ff = get_int("feed_forward_length")
    n_ctx_train = get_int("context_length")
    yarn = rope_scaling_from_metadata(meta, arch, n_ctx_train)  # YaRN (Qwen's long-context files) or None
    tokens = meta.get("tokenizer.ggml.tokens")
    n_vocab = get_int("vocab_size", len(tokens) if isinstance(tokens, list) and tokens else None)
    eps_key = f"{arch}.attention.layer_norm_rms_epsilon"
    rms_eps = _finite(eps_key, _require(meta, eps_key, float), 1e-30, 1.0)
    use_rope = not (arch == "baichuan" and n_layer == BAICHUAN_ALIBI_BLOCK_COUNT)
    rope_dim = get_int("rope.dimension_count", head_dim)
    base_key = f"{arch}.rope.freq_base"
    rope_base = _finite(base_key, _require(meta, base_key, float), 1.0, 1e30) if base_key in meta else 10000.0
    if use_rope and (rope_dim > head_dim or rope_dim % 2):
        raise ValueError(f"{arch}.rope.dimension_count ({rope_dim}) must be even and at most the head size ({head_dim})")
    return ModelHParams(
        rope_style=spec.rope_style, qkv_bias=spec.qkv_bias, qk_norm=spec.qk_norm, arch=arch, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv, head_dim=head_dim,
        n_ff=n_ff, n_vocab=n_vocab, n_ctx_train=n_ctx_train, rms_eps=rms_eps, use_rope=use_rope,
        rope_dim=rope_dim if use_rope else 0, rope_base=rope_base, n_expert=n_expert, n_expert_used=n_expert_used,
        yarn=yarn,
    )


def layer_tensor_shapes(hp: ModelHParams, i: int) -> dict[str, tuple[int, ...]]:
    """GGUF shapes (ne0 first) of layer i's tensors, every one required."""
    D, F, hd = hp.n_embd, hp.n_ff, hp.head_dim
    nq, nkv = hp.n_head * hd, hp.n_head_kv * hd
    p = f"blk.{i}."
    shapes = {
        p + "attn_norm.weight": (D,),
        p + "attn_q.weight": (D, nq),
        p + "attn_k.weight": (D, nkv),
        p + "attn_v.weight": (D, nkv),
        p + "attn_output.weight": (nq, D),
        p + "ffn_norm.weight": (D,),
    }
    if hp.n_expert:  # the router and each expert's matrices, one 3-D tensor per kind
        E = hp.n_expert
        shapes.update({p + "ffn_gate_inp.weight": (D, E), p + "ffn_gate_exps.weight": (D, F, E),
                       p + "ffn_up_exps.weight": (D, F, E), p + "ffn_down_exps.weight": (F, D, E)})
    else:
        shapes.update({p + "ffn_gate.weight": (D, F), p + "ffn_up.weight": (D, F), p + "ffn_down.weight": (F, D)})
    if hp.qkv_bias:
        shapes.update({p + "attn_q.bias": (nq,), p + "attn_k.bias": (nkv,), p + "attn_v.bias": (nkv,)})
    if hp.qk_norm:
        shapes.update({p + "attn_q_norm.weight": (hd,), p + "attn_k_norm.weight": (hd,)})
    return shapes


def expected_tensor_shapes(hp: ModelHParams) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """(required tensors, optional tensors), each name -> GGUF shape."""
    required: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (hp.n_embd, hp.n_vocab),
        "output_norm.weight": (hp.n_embd,),
    }
    for i in range(hp.n_layer):
        required.update(layer_tensor_shapes(hp, i))
    optional: dict[str, tuple[int, ...]] = {"output.weight": (hp.n_embd, hp.n_vocab)}
    if hp.use_rope:
        optional["rope_freqs.weight"] = (hp.rope_dim // 2,)
    return required, optional


# ---- Encoders (llama.cpp's `bert` architecture: BERT, and XLM-RoBERTa as bge-m3 / bge-reranker-v2-m3
# are stored) ----

ENCODER_ARCHITECTURES = ("bert",)
# bert.pooling_type as llama.cpp numbers it (0, none, and a missing key: see encoder_hparams_from_metadata)
POOLING_TYPES = {1: "mean", 2: "cls", 3: "last", 4: "rank"}
MAX_TOKEN_TYPES = 1 << 10


@dataclass(frozen=True)
class EncoderHParams:
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int      # rows of position_embd: the longest input
    norm_eps: float
    pooling: str          # "mean" | "cls" | "last" | "rank"
    n_token_types: int    # rows of token_types (0: the file has none)
    has_rank_head: bool   # cls.output present


def encoder_hparams_from_metadata(meta: dict[str, Any], has_rank_head: bool, n_token_types: int) -> EncoderHParams:
    """Hyperparameters of an encoder file. has_rank_head / n_token_types: what the file's tensors say
    (cls.output present; rows of token_types, 0 if absent). A missing key or an out-of-range value is a
    KeyError / ValueError naming it. Pooling: the file's bert.pooling_type; where it is missing or none
    (converters write it only for sentence-transformers models), rank for a file with a classification
    head (rerankers, as `llama-server --rerank` runs them), mean otherwise."""
    arch = meta.get("general.architecture")
    if arch not in ENCODER_ARCHITECTURES:
        raise ValueError(f"architecture {describe(arch)} (general.architecture) is not an encoder; supported: {ENCODER_ARCHITECTURES}")

    get_int = _int_reader(meta, arch)
    n_layer, n_embd, n_head, n_head_kv = _layer_shape(get_int)
    if n_embd % n_head or n_head % n_head_kv:
        raise ValueError(f"{arch}.embedding_length ({n_embd}) must be a multiple of attention.head_count ({n_head}), "
                         f"and that of attention.head_count_kv ({n_head_kv})")
    tokens = meta.get("tokenizer.ggml.tokens")
    n_vocab = get_int("vocab_size", len(tokens) if isinstance(tokens, list) and tokens else None)
    eps_key = f"{arch}.attention.layer_norm_epsilon"
    norm_eps = _finite(eps_key, _require(meta, eps_key, float), 1e-30, 1.0)
    if meta.get(f"{arch}.attention.causal", False) is True:
        raise ValueError(f"metadata key '{arch}.attention.causal' is true: a causal encoder is not supported")
    pool_key = f"{arch}.pooling_type"
    pooling_id = meta.get(pool_key, 0)
    if isinstance(pooling_id, bool) or not isinstance(pooling_id, int) or pooling_id not in (0, *POOLING_TYPES):
        raise ValueError(f"metadata key {pool_key!r} = {describe(pooling_id)}: supported are 1 (mean), 2 (cls), 3 (last), 4 (rank)")
    pooling = POOLING_TYPES.get(pooling_id) or ("rank" if has_rank_head else "mean")
    if pooling == "rank" and not has_rank_head:
        raise ValueError(f"{pool_key} is 4 (rank) but the file has no classification head (cls.output.weight)")
    return EncoderHParams(arch=arch, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
                          head_dim=n_embd // n_head, n_ff=get_int("feed_forward_length"), n_vocab=n_vocab,
                          n_ctx_train=get_int("context_length"), norm_eps=norm_eps, pooling=pooling,
                          n_token_types=n_token_types, has_rank_head=has_rank_head)


def encoder_tensor_shapes(hp: EncoderHParams, n_cls_out: int) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """(required, optional) encoder tensors, each name -> GGUF shape (ne0 first)."""
    D, F, nkv = hp.n_embd, hp.n_ff, hp.n_head_kv * hp.head_dim
    required: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (D, hp.n_vocab), "position_embd.weight": (D, hp.n_ctx_train),
        "token_embd_norm.weight": (D,), "token_embd_norm.bias": (D,),
    }
    optional: dict[str, tuple[int, ...]] = {"token_types.weight": (D, max(hp.n_token_types, 1))}
    if hp.pooling == "rank":
        optional.update({"cls.weight": (D, D), "cls.bias": (D,), "cls.output.bias": (n_cls_out,)})
        required["cls.output.weight"] = (D, n_cls_out)
    for i in range(hp.n_layer):
        p = f"blk.{i}."
        required.update({p + "attn_q.weight": (D, D), p + "attn_k.weight": (D, nkv), p + "attn_v.weight": (D, nkv),
                         p + "attn_output.weight": (D, D), p + "attn_output_norm.weight": (D,),
                         p + "attn_output_norm.bias": (D,), p + "ffn_up.weight": (D, F), p + "ffn_down.weight": (F, D),
                         p + "layer_output_norm.weight": (D,), p + "layer_output_norm.bias": (D,)})
        optional.update({p + "attn_q.bias": (D,), p + "attn_k.bias": (nkv,), p + "attn_v.bias": (nkv,),
                         p + "attn_output.bias": (D,), p + "ffn_up.bias": (F,), p + "ffn_down.bias": (D,)})
    return required, optional
