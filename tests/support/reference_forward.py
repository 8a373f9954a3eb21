"""A plain numpy forward pass over dequantized weights: the numerical oracle of the native core.

Written for clarity, never for speed: float32 activations (matmuls summed in float64). `forward`
computes a whole sequence; greedy decoding keeps each layer's keys and values (`past`) so each new
token is one more row, as the same arithmetic per row gives the same logits.
Two switches make it compute what the native core computes, so the two can be compared tightly:
`quantize_activations` rounds every matmul input through Q8_0 (blocks of 32, scale max|x|/127, round
half away from zero; the inputs of Q4_K / Q5_K / Q6_K matrices, and of the matrices beside them, with
one scale per 256 values, as kernels.h's act_group), and `fp16_kv` rounds keys and values to fp16 as
the KV cache stores them.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader
from gguf.quants import dequantize

from sysinfer.model.architecture import hparams_from_metadata
from sysinfer.model.gguf_header import read_gguf_header


# Matrices the native core applies to one input (quantized once for all of them): a layer's tensors by
# the last part of their name.
_SHARED_INPUT = {"attn_q": "qkv", "attn_k": "qkv", "attn_v": "qkv", "attn_qkv": "qkv",
                 "ffn_gate": "ffn", "ffn_up": "ffn", "ffn_gate_inp": "ffn", "ffn_gate_exps": "ffn", "ffn_up_exps": "ffn",
                 "ffn_down": "down", "ffn_down_exps": "down"}
_SHARED_SCALE_TYPES = (QT.Q4_K, QT.Q5_K, QT.Q6_K)


def act_groups(types: dict[str, QT]) -> dict[str, int]:
    """Weight name -> the activation blocks that share one scale in its input (kernels.h's act_group):
    8 when it or a matrix reading the same input is Q4_K / Q5_K / Q6_K, else 1."""
    def key(name: str) -> str:
        stem = name.removesuffix(".weight")
        layer, _, last = stem.rpartition(".")
        return f"{layer}.{_SHARED_INPUT[last]}" if last in _SHARED_INPUT else stem
    group: dict[str, int] = {}
    for name, t in types.items():
        k = key(name)
        group[k] = max(group.get(k, 1), 8 if t in _SHARED_SCALE_TYPES else 1)
    return {name: group[key(name)] for name in types}


def q8_round_trip(x: np.ndarray, group: int = 1) -> np.ndarray:
    """x [..., n] through the native core's activation quantization: blocks of 32, `group` of them
    sharing the scale max|x| / 127 of their values, round half away from zero (float32 arithmetic)."""
    x = x.astype(np.float32)
    runs = x.reshape(*x.shape[:-1], -1, 32 * group)
    d = np.abs(runs).max(axis=-1, keepdims=True) / np.float32(127)
    safe = np.where(d == 0, 1, d)
    q = np.where(d == 0, 0, np.trunc(runs * (np.float32(1) / safe) + np.copysign(np.float32(0.5), runs)))
    return (q * d).astype(np.float32).reshape(x.shape)


class ReferenceModel:
    def __init__(self, path: str, quantize_activations: bool = True, fp16_kv: bool = True):
        reader = GGUFReader(path, "r")
        self.hp = hparams_from_metadata(read_gguf_header(path))
        self.w = {t.name: self._dequantize(t) for t in reader.tensors}
        # The native core quantizes the inputs of quantized matrices only (F32/F16/BF16 take floats).
        self.quantized = {t.name for t in reader.tensors if t.tensor_type not in (QT.F32, QT.F16, QT.BF16)}
        self.w64: dict[str, np.ndarray] = {}
        self.quantize_activations = quantize_activations
        self.fp16_kv = fp16_kv
        types = {t.name: QT(t.tensor_type) for t in reader.tensors}
        if "output.weight" not in self.w:
            self.w["output.weight"] = self.w["token_embd.weight"]  # tied embeddings
            types["output.weight"] = types["token_embd.weight"]
            if "token_embd.weight" in self.quantized:
                self.quantized.add("output.weight")
        self.group = act_groups(types)

    @staticmethod
    def _dequantize(t) -> np.ndarray:
        shape = tuple(int(n) for n in reversed(t.shape))  # numpy order: [rows, cols]
        if t.tensor_type in (QT.F32, QT.F16):
            return np.asarray(t.data, dtype=np.float32).reshape(shape)
        return dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)

    def q8(self, x: np.ndarray, name: str) -> np.ndarray:
        """x [..., n] as the native core sees the input of matrix `name`: quantized when enabled."""
        if not self.quantize_activations:
            return x
        return q8_round_trip(x, self.group[name])

    def matmul(self, x: np.ndarray, name: str) -> np.ndarray:
        # Summed in float64: a float32 BLAS sums in an order of its own (it differs between CPUs),
        # and that noise flips the next layer's Q8_0 roundings, drowning the native core's error.
        x = self.q8(x, name) if name in self.quantized else x
        if name not in self.w64:
            self.w64[name] = self.w[name].astype(np.float64)  # [rows, cols], converted once
        return (x.astype(np.float64) @ self.w64[name].T).astype(np.float32)

    def expert_matmul(self, x: np.ndarray, name: str, e: int) -> np.ndarray:
        """x through expert e's matrix of the 3-D tensor name ([E][rows][cols] in numpy order)."""
        x = self.q8(x, name) if name in self.quantized else x
        if name not in self.w64:
            self.w64[name] = self.w[name].astype(np.float64)
        return (x.astype(np.float64) @ self.w64[name][e].T).astype(np.float32)

    def moe(self, h: np.ndarray, p: str) -> np.ndarray:
        """Qwen3-MoE's feed-forward of rows h [T, D]: softmax over the router's logits, the top
        n_expert_used experts (highest first, the lower index on a tie), their probabilities
        renormalised to sum to one; the weighted sum of those experts' SwiGLU outputs."""
        logits = self.matmul(h, p + "ffn_gate_inp.weight").astype(np.float64)  # [T, E]
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        out = np.zeros_like(h)
        for t in range(h.shape[0]):
            chosen = np.argsort(-probs[t], kind="stable")[: self.hp.n_expert_used]
            weights = probs[t, chosen] / max(probs[t, chosen].sum(), 6.103515625e-5)
            row = h[t : t + 1]
            for e, wt in zip(chosen, weights):
                gate = self.expert_matmul(row, p + "ffn_gate_exps.weight", e)
                up = self.expert_matmul(row, p + "ffn_up_exps.weight", e)
                out[t] += np.float32(wt) * self.expert_matmul(gate / (1 + np.exp(-gate)) * up, p + "ffn_down_exps.weight", e)[0]
        return out

    def projection(self, x: np.ndarray, name: str) -> np.ndarray:
        """x through matrix name.weight, plus name.bias where the file has one (Qwen2's Q/K/V)."""
        y = self.matmul(x, name + ".weight")
        return y + self.w[name + ".bias"].reshape(-1) if name + ".bias" in self.w else y

    def rms_norm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        ms = np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True)
        return (x / np.sqrt(ms + self.hp.rms_eps)).astype(np.float32) * weight

    def rope(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """x [T, heads, hd]; rotates pairs of the first rope_dim dims: adjacent (2i, 2i+1) for llama's
        style, halves (i, i + rope_dim/2) for NEOX's (Qwen)."""
        hp = self.hp
        half = hp.rope_dim // 2
        inv_freq = hp.rope_base ** (-2.0 * np.arange(half) / hp.rope_dim)
        if "rope_freqs.weight" in self.w:
            inv_freq = inv_freq / self.w["rope_freqs.weight"].reshape(-1)
        mscale = 1.0
        if hp.yarn is not None:
            inv_freq, mscale = self.yarn(inv_freq)
        angles = positions[:, None].astype(np.float64) * inv_freq[None, :]  # [T, half]
        cos = (np.cos(angles) * mscale)[:, None, :].astype(np.float32)
        sin = (np.sin(angles) * mscale)[:, None, :].astype(np.float32)
        out = x.copy()
        if hp.rope_style == "halves":
            first, second = slice(0, half), slice(half, hp.rope_dim)
        else:
            first, second = slice(0, hp.rope_dim, 2), slice(1, hp.rope_dim, 2)
        a, b = x[..., first], x[..., second]
        out[..., first] = a * cos - b * sin
        out[..., second] = a * sin + b * cos
        return out

    def yarn(self, inv_freq: np.ndarray) -> tuple[np.ndarray, float]:
        """YaRN as transformers' _compute_yarn_parameters states it: the correction range of pair
        indices (dims whose frequency turns beta_fast = 32 / beta_slow = 1 times over the original
        context, floored / ceiled and clipped), a linear ramp over it between the interpolated
        (inv_freq / factor) and the original frequencies, and cos / sin scaled by
        0.1 ln(factor) + 1 (times the file's attn_factor)."""
        y, dim, base = self.hp.yarn, self.hp.rope_dim, self.hp.rope_base

        def correction_dim(rotations: float) -> float:
            return (dim * np.log(y.original_context / (rotations * 2 * np.pi))) / (2 * np.log(base))

        low = max(np.floor(correction_dim(32.0)), 0)
        high = min(np.ceil(correction_dim(1.0)), dim - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
        keep = 1 - ramp  # 1: the original (extrapolated) frequency
        mixed = inv_freq / y.factor * (1 - keep) + inv_freq * keep
        return mixed, (0.1 * np.log(y.factor) + 1.0 if y.factor > 1 else 1.0) * y.attn_factor

    def alibi_slopes(self) -> np.ndarray:
        n = self.hp.n_head
        pow2 = 2 ** int(np.floor(np.log2(n)))
        m0 = 2.0 ** (-self.hp.alibi_max_bias / pow2)
        m1 = 2.0 ** (-self.hp.alibi_max_bias / 2 / pow2)
        return np.array([m0 ** (h + 1) if h < pow2 else m1 ** (2 * (h - pow2) + 1) for h in range(n)], np.float32)

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        """q [T, H, hd], k/v [S, Hkv, hd] -> [T, H * hd], causal, GQA by repeating K/V heads. The queries
        are the last T of the S positions (S > T: the earlier keys and values come from `past`)."""
        T, H, hd = q.shape
        S = k.shape[0]
        group = H // k.shape[1]
        k = np.repeat(k, group, axis=1)
        v = np.repeat(v, group, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd)  # [H, T, S]
        if not self.hp.use_rope:
            distance = np.arange(S - T, S)[:, None] - np.arange(S)[None, :]  # query pos - key pos
            scores = scores - self.alibi_slopes()[:, None, None] * distance[None]
        scores = np.where(np.tril(np.ones((T, S), bool), k=S - T)[None], scores, -np.inf)
        p = np.exp(scores - scores.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        return np.einsum("hts,shd->thd", p, v).reshape(T, H * hd)

    def forward(self, tokens: list[int], past: list | None = None) -> np.ndarray:
        """Logits [T, n_vocab] for every position of the sequence. past: each layer's (keys, values)
        [S, Hkv, hd] of the S positions before `tokens`, extended in place ([] to start one)."""
        hp, w = self.hp, self.w
        T, hd = len(tokens), hp.head_dim
        start = past[0][0].shape[0] if past else 0
        positions = np.arange(start, start + T)
        x = w["token_embd.weight"][np.asarray(tokens)]  # [T, D]
        for i in range(hp.n_layer):
            p = f"blk.{i}."
            h = self.rms_norm(x, w[p + "attn_norm.weight"])
            q, k, v = (self.projection(h, p + "attn_" + x) for x in "qkv")
            q, k, v = q.reshape(T, hp.n_head, hd), k.reshape(T, hp.n_head_kv, hd), v.reshape(T, hp.n_head_kv, hd)
            if hp.qk_norm:  # Qwen3: each head's q and k RMS-normed before RoPE
                q, k = self.rms_norm(q, w[p + "attn_q_norm.weight"]), self.rms_norm(k, w[p + "attn_k_norm.weight"])
            if hp.use_rope:
                q, k = self.rope(q, positions), self.rope(k, positions)
            if self.fp16_kv:
                k, v = k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32)
            if past is not None:
                if start:
                    k, v = np.concatenate([past[i][0], k]), np.concatenate([past[i][1], v])
                past[i:i + 1] = [(k, v)]
            x = x + self.matmul(self.attention(q, k, v), p + "attn_output.weight")
            h = self.rms_norm(x, w[p + "ffn_norm.weight"])
            if hp.n_expert:
                x = x + self.moe(h, p)
                continue
            gate, up = self.matmul(h, p + "ffn_gate.weight"), self.matmul(h, p + "ffn_up.weight")
            x = x + self.matmul(gate / (1 + np.exp(-gate)) * up, p + "ffn_down.weight")
        return self.matmul(self.rms_norm(x, w["output_norm.weight"]), "output.weight")

    def greedy(self, prompt: list[int], n: int) -> list[int]:
        """n greedy tokens after prompt: the prompt in one forward pass, then one row per token."""
        past: list = []
        out = [int(np.argmax(self.forward(list(prompt), past)[-1]))]
        while len(out) < n:
            out.append(int(np.argmax(self.forward([out[-1]], past)[-1])))
        return out[:n]
