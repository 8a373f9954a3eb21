"""A plain float64 numpy forward pass of a BERT / XLM-R encoder (llama.cpp's `bert` graph, which is
Hugging Face's BertModel with token types 0): the numerical oracle of the native encoder. Written for
clarity: one sequence at a time, every step as its paper defines it (exact erf GELU)."""

from __future__ import annotations

import math

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf.quants import dequantize

from sysinfer.model.encoder_model import read_encoder_file
from support.reference_forward import act_groups, q8_round_trip

_erf = np.frompyfunc(math.erf, 1, 1)  # exact (libm's double erf), element by element


def gguf_weights(path: str) -> dict[str, np.ndarray]:
    """GGUF name -> float64 weight in numpy order ([rows, cols]), dequantized (gguf-py's dequantize)."""
    out = {}
    for name, t in read_encoder_file(path)[0].tensors.items():
        shape = tuple(reversed(t.shape))
        if t.type in (QT.F32, QT.F16):
            a = np.asarray(t.data, dtype=np.float64)
        else:
            a = dequantize(t.raw_bytes(), t.type).astype(np.float64)
        if name in ("token_types.weight", "cls.output.weight") and len(shape) == 1:
            shape = (1, shape[0])  # one row written 1-D (llama-quantize does)
        out[name] = a.reshape(shape)
    return out


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def q8(x: np.ndarray, group: int = 1) -> np.ndarray:
    """x [..., n] through the native core's activation quantization (reference_forward.q8_round_trip),
    in float64."""
    return q8_round_trip(x, group).astype(np.float64)


def quantized_names(path: str) -> dict[str, int]:
    """A file's quantized matrices (the native core quantizes their inputs), each with its input's
    act_group (reference_forward.act_groups)."""
    types = {n: t.type for n, t in read_encoder_file(path)[0].tensors.items()}
    groups = act_groups(types)
    return {n: groups[n] for n, t in types.items() if t not in (QT.F32, QT.F16, QT.BF16)}


def _linear(w: dict, name: str, x: np.ndarray, quantized: bool | set = False) -> np.ndarray:
    """quantized: True (every input, blocks of 32) or the quantized weight names (quantized_names)."""
    if quantized is True:
        x = q8(x)
    elif quantized and name + ".weight" in quantized:
        x = q8(x, quantized[name + ".weight"] if isinstance(quantized, dict) else 1)
    y = x @ w[name + ".weight"].T
    return y + w[name + ".bias"] if name + ".bias" in w else y


def hidden_states(w: dict, ids: list[int], n_layer: int, n_head: int, eps: float, fp16_kv: bool = False,
                  quantized: bool | set = False) -> np.ndarray:
    """[n, D] the last layer's output for one sequence. Two switches mirror what the native core does,
    for tight comparisons: fp16_kv rounds keys and values to fp16 (its attention reads them so), and
    quantized rounds every matmul input through Q8_0 (its input of quantized matrices)."""
    w = {k: np.asarray(v, dtype=np.float64) for k, v in w.items()}
    n = len(ids)
    x = w["token_embd.weight"][ids] + w["position_embd.weight"][:n]
    if "token_types.weight" in w:
        x = x + w["token_types.weight"][0]
    x = _layer_norm(x, w["token_embd_norm.weight"], w["token_embd_norm.bias"], eps)
    D = x.shape[1]
    hd = D // n_head
    for i in range(n_layer):
        p = f"blk.{i}."
        q, k, v = (_linear(w, p + t, x, quantized).reshape(n, n_head, hd).transpose(1, 0, 2)
                   for t in ("attn_q", "attn_k", "attn_v"))
        if fp16_kv:
            k, v = (t.astype(np.float16).astype(np.float64) for t in (k, v))
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)          # [heads, n, n], no mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = (s @ v).transpose(1, 0, 2).reshape(n, D)
        x = _layer_norm(x + _linear(w, p + "attn_output", a, quantized), w[p + "attn_output_norm.weight"],
                        w[p + "attn_output_norm.bias"], eps)
        h = _linear(w, p + "ffn_up", x, quantized)
        h = 0.5 * h * (1 + _erf(h / math.sqrt(2)).astype(np.float64))
        x = _layer_norm(x + _linear(w, p + "ffn_down", h, quantized), w[p + "layer_output_norm.weight"],
                        w[p + "layer_output_norm.bias"], eps)
    return x


def embedding(w: dict, ids: list[int], n_layer: int, n_head: int, eps: float, pooling: str, normalize: bool = True) -> np.ndarray:
    h = hidden_states(w, ids, n_layer, n_head, eps)
    v = h.mean(0) if pooling == "mean" else h[0] if pooling == "cls" else h[-1]
    return v / np.linalg.norm(v) if normalize else v


def rank_score(w: dict, ids: list[int], n_layer: int, n_head: int, eps: float, fp16_kv: bool = False,
               quantized: bool | set = False) -> float:
    """The classification head on the first token: cls.output(tanh(cls(h0))) (RoBERTa's head)."""
    h = hidden_states(w, ids, n_layer, n_head, eps, fp16_kv, quantized)[0]
    w = {k: np.asarray(v, dtype=np.float64) for k, v in w.items() if k.startswith("cls")}
    if "cls.weight" in w:
        h = np.tanh(_linear(w, "cls", h, quantized))
    return float(_linear(w, "cls.output", h, quantized)[0])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
