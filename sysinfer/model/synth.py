"""Random-weight GGUF files with a real model's tensor names, shapes and types.

Used for tests (tiny models of each architecture) and for measuring the speed and memory of models
that can't be downloaded here (exact Llama-3-8B and Baichuan2-13B shapes). Quantized blocks are drawn
directly in their on-disk format (random codes, scales sized for the wanted standard deviation), so
an 8B file is written in seconds instead of quantizing 8 billion floats.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFWriter
from gguf.quants import quantize

from .random_blocks import BLOCK_ELEMS, random_blocks

# Standard deviation of the codes of each format when drawn uniformly (for scaling).
_Q4_STD = np.sqrt((16**2 - 1) / 12)   # uniform over 16 levels
_Q8_STD = np.sqrt((255**2 - 1) / 12)  # uniform over -127..127
_Q6_STD = np.sqrt((64**2 - 1) / 12)


@dataclass
class SynthSpec:
    arch: str = "llama"
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    n_vocab: int = 256
    n_ctx: int = 512
    rope_base: float = 10000.0
    rms_eps: float = 1e-5
    matrix_type: QT = QT.Q4_0
    embd_type: QT = QT.Q4_0
    output_type: QT | None = QT.Q6_K  # None: tied to token_embd, as SmolLM2
    rope_freqs: bool = False           # Llama 3.1's rope_freqs.weight
    head_dim: int | None = None        # None: n_embd // n_head; else written as attention.key_length (Qwen3)
    # Per-matrix types over matrix_type, by short name ("attn_v", "ffn_down", ...): a (layer -> type)
    # function, as llama.cpp's mixes (Q4_K_M: Q6_K for some layers' attn_v / ffn_down) vary by layer.
    type_overrides: dict[str, Any] = field(default_factory=dict)
    n_expert: int = 0                  # MoE (qwen3moe): experts per layer; n_ff is then one expert's size
    n_expert_used: int = 0
    name: str = "synthetic"
    metadata: dict[str, Any] = field(default_factory=dict)  # extra keys (e.g. a real tokenizer)


def random_matrix_bytes(rng: np.random.Generator, qtype: QT, rows: int, cols: int, std: float) -> np.ndarray:
    """rows x cols weights of the given type and standard deviation, as the file's bytes/values."""
    if qtype == QT.F32:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * std).astype(np.float32)
    if qtype == QT.F16:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * std).astype(np.float16)
    if qtype == QT.BF16:
        return quantize(rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(std), QT.BF16)
    if qtype in BLOCK_ELEMS:  # Q5_0, Q5_1, IQ4_NL, the K-quants but Q6_K, IQ4_XS
        return random_blocks(rng, qtype, rows, cols, std)
    block = 256 if qtype == QT.Q6_K else 32
    if cols % block:
        raise ValueError(f"{qtype.name} rows must be a multiple of {block} long, got {cols}")
    nb32 = cols // 32

    def scales(n: int, code_std: float) -> np.ndarray:  # fp16 scales, jittered around the target
        return (std / code_std * rng.uniform(0.5, 1.5, size=n)).astype(np.float16).view(np.uint8).reshape(-1, 2)

    if qtype in (QT.Q4_0, QT.Q4_1, QT.Q8_0):
        n = rows * nb32
        if qtype == QT.Q8_0:
            q = rng.integers(-127, 128, size=(n, 32), dtype=np.int8).view(np.uint8)
            blocks = np.concatenate([scales(n, _Q8_STD), q], axis=1)
        else:
            q = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
            parts = [scales(n, _Q4_STD)]
            if qtype == QT.Q4_1:  # x = d*q + m with q in 0..15: m = -8d centres it
                d = parts[0].copy().view(np.float16).reshape(-1)
                parts.append((-8 * d.astype(np.float32)).astype(np.float16).view(np.uint8).reshape(-1, 2))
            blocks = np.concatenate(parts + [q], axis=1)
        return blocks.reshape(rows, -1)
    if qtype == QT.Q6_K:
        n = rows * (cols // 256)
        ql = rng.integers(0, 256, size=(n, 128), dtype=np.uint8)
        qh = rng.integers(0, 256, size=(n, 64), dtype=np.uint8)
        sc = rng.integers(8, 24, size=(n, 16), dtype=np.int8) * rng.choice(np.array([-1, 1], dtype=np.int8), size=(n, 16))
        d = (std / (_Q6_STD * 16) * rng.uniform(0.5, 1.5, size=n)).astype(np.float16).view(np.uint8).reshape(-1, 2)
        return np.concatenate([ql, qh, sc.view(np.uint8), d], axis=1).reshape(rows, -1)
    raise ValueError(f"cannot synthesize tensors of type {qtype.name}")


def _minimal_tokenizer(n_vocab: int) -> dict[str, Any]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<t{i}>" for i in range(3, n_vocab)]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3, 3, 3] + [1] * (n_vocab - 3),
        "tokenizer.ggml.merges": [],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }


def placeholder_spm_tokenizer(n_vocab: int) -> dict[str, Any]:
    """A SentencePiece ("llama") vocabulary of n_vocab made-up pieces, laid out as real SPM GGUF files
    are (<unk> <s> </s>, the 256 byte tokens, then scored word pieces), so llama.cpp loads the file
    too. For shapes whose real tokenizer no PyPI package carries (Baichuan 2)."""
    if n_vocab < 3 + 256 + 1:
        raise ValueError(f"an SPM placeholder vocabulary needs more than 259 tokens, not {n_vocab}")
    n_words = n_vocab - 3 - 256  # the first is the word boundary piece itself
    tokens = (["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["\u2581"]
              + [f"\u2581w{i}" for i in range(1, n_words)])
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [0.0, 0.0, 0.0] + [0.0] * 256 + [-float(i) for i in range(n_words)],
        "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 256 + [1] * n_words,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
    }


def placeholder_bpe_tokenizer(n_vocab: int, pre: str, n_normal: int, specials: list[str]) -> dict[str, Any]:
    """A byte-level BPE ("gpt2") vocabulary of made-up merges, laid out as real BPE GGUF files are, so
    llama.cpp loads the file too (it refuses a BPE file without merges): the 256 byte characters, then
    merged pieces up to n_normal (every pair of byte characters, then byte-pair + byte), then the
    control tokens `specials` (the first two are BOS and EOS), then unused padding to n_vocab. For
    shapes whose real tokenizer no PyPI package carries (deepseek-llm)."""
    from .bpe_tokenizer import byte_decoder  # noqa: PLC0415

    if n_normal < 256 or n_normal + len(specials) > n_vocab or len(specials) < 2:
        raise ValueError(f"a BPE placeholder vocabulary of {n_vocab}: bad layout ({n_normal} pieces, "
                         f"{len(specials)} specials)")
    chars = sorted(byte_decoder(), key=byte_decoder().get)  # the byte characters, in byte order
    tokens, merges = list(chars), []
    pairs = ((a, b) for a in chars for b in chars)
    triples = ((a + b, c) for a in chars for b in chars for c in chars)
    for left, right in itertools.chain(pairs, triples):
        if len(tokens) == n_normal:
            break
        tokens.append(left + right)
        merges.append(f"{left} {right}")
    n_pad = n_vocab - n_normal - len(specials)
    tokens += specials + [f"<|pad{i}|>" for i in range(n_pad)]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [1] * n_normal + [3] * len(specials) + [5] * n_pad,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": n_normal,
        "tokenizer.ggml.eos_token_id": n_normal + 1,
        "tokenizer.ggml.add_bos_token": True,
    }


def head_dim(spec: SynthSpec) -> int:
    return spec.head_dim or spec.n_embd // spec.n_head


def _add_metadata(w: GGUFWriter, spec: SynthSpec) -> None:
    a = spec.arch
    # Real Qwen files carry neither rope.dimension_count nor vocab_size (llama.cpp's converter
    # writes them for llama); Qwen3's carry key_length / value_length.
    llama_keys = a in ("llama", "baichuan")
    w.add_name(spec.name)
    w.add_uint32(f"{a}.block_count", spec.n_layer)
    w.add_uint32(f"{a}.context_length", spec.n_ctx)
    w.add_uint32(f"{a}.embedding_length", spec.n_embd)
    # MoE: feed_forward_length is the dense equivalent (Qwen3-30B-A3B: 6144 = 8 x 768), as real files have it.
    w.add_uint32(f"{a}.feed_forward_length", spec.n_ff * spec.n_expert_used if spec.n_expert else spec.n_ff)
    if spec.n_expert:
        w.add_uint32(f"{a}.expert_count", spec.n_expert)
        w.add_uint32(f"{a}.expert_used_count", spec.n_expert_used)
        w.add_uint32(f"{a}.expert_feed_forward_length", spec.n_ff)
    w.add_uint32(f"{a}.attention.head_count", spec.n_head)
    w.add_uint32(f"{a}.attention.head_count_kv", spec.n_head_kv)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", spec.rms_eps)
    w.add_float32(f"{a}.rope.freq_base", spec.rope_base)
    if llama_keys:
        w.add_uint32(f"{a}.rope.dimension_count", head_dim(spec))
        w.add_uint32(f"{a}.vocab_size", spec.n_vocab)
    if spec.head_dim is not None or a in ("qwen3", "qwen3moe"):
        w.add_uint32(f"{a}.attention.key_length", head_dim(spec))
        w.add_uint32(f"{a}.attention.value_length", head_dim(spec))
    # A given tokenizer replaces the minimal one whole (a stray gpt2 key would confuse readers).
    has_tokenizer = "tokenizer.ggml.model" in spec.metadata
    meta = spec.metadata if has_tokenizer else {**_minimal_tokenizer(spec.n_vocab), **spec.metadata}
    for key, value in meta.items():
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, list):
            w.add_array(key, value)
        else:
            raise TypeError(f"metadata {key!r}: unsupported value type {type(value).__name__}")


def _add(w: GGUFWriter, name: str, data: np.ndarray, qtype: QT) -> None:
    if qtype in (QT.F32, QT.F16):
        w.add_tensor(name, data)
    else:
        w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)


# What llama.cpp's quantizer writes instead of a 256-wide type when a matrix's rows are not a
# multiple of 256 long (so SmolLM2's 576-wide rows of a Q4_K_M file are Q5_0).
_FALLBACK_256 = {QT.Q4_K: QT.Q5_0, QT.Q5_K: QT.Q5_1, QT.Q6_K: QT.Q8_0, QT.Q2_K: QT.IQ4_NL, QT.Q3_K: QT.IQ4_NL,
                 QT.IQ4_XS: QT.IQ4_NL}


def block_fallback(qtype: QT, cols: int) -> QT:
    """qtype, or its 32-wide fallback when rows of `cols` values do not split into 256-value blocks."""
    return _FALLBACK_256.get(qtype, qtype) if cols % 256 else qtype


def matrix_type(spec: SynthSpec, name: str, layer: int, cols: int | None = None) -> QT:
    """The type of layer `layer`'s matrix `name` ("attn_q", ...): an override (a type, or a function of
    the layer) or spec.matrix_type; with cols, its block_fallback for rows that long."""
    t = spec.type_overrides.get(name, spec.matrix_type)
    t = t(layer) if callable(t) else t
    return t if cols is None else block_fallback(t, cols)


def _add_experts(w: GGUFWriter, rng: np.random.Generator, spec: SynthSpec, i: int, branch: float) -> None:
    """Layer i's router (F32, as llama.cpp's quantizer keeps it) and expert tensors [E][rows][cols].
    The router's logits have a standard deviation of ~2, so routing is decided, as a trained one's is."""
    D, F, E = spec.n_embd, spec.n_ff, spec.n_expert
    _add(w, f"blk.{i}.ffn_gate_inp.weight", random_matrix_bytes(rng, QT.F32, E, D, 2 / np.sqrt(D)), QT.F32)
    for name, rows, cols, std in (("ffn_gate_exps", F, D, 1 / np.sqrt(D)), ("ffn_up_exps", F, D, 1 / np.sqrt(D)),
                                  ("ffn_down_exps", D, F, branch / np.sqrt(F))):
        qtype = matrix_type(spec, name, i, cols)
        data = random_matrix_bytes(rng, qtype, E * rows, cols, std)
        _add(w, f"blk.{i}.{name}.weight", data.reshape(E, rows, -1), qtype)


def write_synthetic_gguf(path: str, spec: SynthSpec, seed: int = 0) -> str:
    """Write a random-weight model (a baichuan with 40 layers loads as ALiBi); activations stay finite through all layers (norms are ~1 and
    every matrix has std 1/sqrt(fan-in), down-scaled with depth as residual branches add up)."""
    from .architecture import ARCHITECTURES

    arch = ARCHITECTURES[spec.arch]
    rng = np.random.default_rng(seed)
    D, F, hd = spec.n_embd, spec.n_ff, head_dim(spec)
    w = GGUFWriter(path, spec.arch)
    _add_metadata(w, spec)
    embd_type = block_fallback(spec.embd_type, D)
    _add(w, "token_embd.weight", random_matrix_bytes(rng, embd_type, spec.n_vocab, D, 1.0), embd_type)
    _add(w, "output_norm.weight", rng.uniform(0.8, 1.2, D).astype(np.float32), QT.F32)
    if spec.output_type is not None:
        out_type = block_fallback(spec.output_type, D)
        _add(w, "output.weight", random_matrix_bytes(rng, out_type, spec.n_vocab, D, 1 / np.sqrt(D)), out_type)
    if spec.rope_freqs:
        _add(w, "rope_freqs.weight", rng.uniform(1.0, 8.0, hd // 2).astype(np.float32), QT.F32)
    branch = 1 / np.sqrt(2 * spec.n_layer)
    shapes = {  # name: (rows, cols, std)
        "attn_q": (spec.n_head * hd, D, 1 / np.sqrt(D)),
        "attn_k": (spec.n_head_kv * hd, D, 1 / np.sqrt(D)),
        "attn_v": (spec.n_head_kv * hd, D, 1 / np.sqrt(D)),
        "attn_output": (D, spec.n_head * hd, branch / np.sqrt(spec.n_head * hd)),
        "ffn_gate": (F, D, 1 / np.sqrt(D)),
        "ffn_up": (F, D, 1 / np.sqrt(D)),
        "ffn_down": (D, F, branch / np.sqrt(F)),
    }
    if spec.n_expert:  # the FFN is the router and one 3-D tensor per kind of expert matrix
        for name in ("ffn_gate", "ffn_up", "ffn_down"):
            del shapes[name]
    for i in range(spec.n_layer):
        if spec.n_expert:
            _add_experts(w, rng, spec, i, branch)
        _add(w, f"blk.{i}.attn_norm.weight", rng.uniform(0.8, 1.2, D).astype(np.float32), QT.F32)
        _add(w, f"blk.{i}.ffn_norm.weight", rng.uniform(0.8, 1.2, D).astype(np.float32), QT.F32)
        for name, (rows, cols, std) in shapes.items():
            qtype = matrix_type(spec, name, i, cols)
            _add(w, f"blk.{i}.{name}.weight", random_matrix_bytes(rng, qtype, rows, cols, std), qtype)
            if arch.qkv_bias and name in ("attn_q", "attn_k", "attn_v"):  # Qwen2: sizeable, as trained ones are
                _add(w, f"blk.{i}.{name}.bias", rng.normal(0, 0.5, rows).astype(np.float32), QT.F32)
        if arch.qk_norm:  # Qwen3: per-head norms of q and k
            for name in ("attn_q_norm", "attn_k_norm"):
                _add(w, f"blk.{i}.{name}.weight", rng.uniform(0.8, 1.2, hd).astype(np.float32), QT.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
