"""Plain numpy quantizers for the types gguf-py can only dequantize (Q4_K, Q5_K, IQ4_NL, IQ4_XS), so CI
(which has no llama.cpp build) can make real-weight K-quant files. Round-to-nearest with min/max
scales: simpler than llama.cpp's search for the best scales (slightly worse weights), the same
on-disk formats. gguf-py's dequantize is the definition the results are checked against."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT

from sysinfer.model.random_blocks import IQ4_LEVELS, pack_k_scales


def _f16(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, dtype=np.float32).astype(np.float16)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape, dtype=np.float64), where=b != 0)


def _k_quant(x: np.ndarray, bits: int) -> np.ndarray:
    """Q4_K (bits 4) / Q5_K (bits 5) blocks [n, bytes] of x [n, 256]: per sub-block of 32 a scale and a
    minimum, 6 bits each against the super-block's fp16 d and dmin."""
    levels = (1 << bits) - 1
    xs = x.reshape(-1, 8, 32).astype(np.float64)
    lo, hi = np.minimum(xs.min(-1), 0), np.maximum(xs.max(-1), 0)
    s, m = (hi - lo) / levels, -lo
    d, dmin = _f16(s.max(-1) / 63), _f16(m.max(-1) / 63)
    sc = np.clip(np.rint(_div(s, d.astype(np.float64)[:, None])), 0, 63)
    sc = np.where((sc == 0) & (s > 0), 1, sc)
    mn = np.clip(np.rint(_div(m, dmin.astype(np.float64)[:, None])), 0, 63)
    step = d.astype(np.float64)[:, None, None] * sc[..., None]
    off = dmin.astype(np.float64)[:, None, None] * mn[..., None]
    q = np.clip(np.rint(_div(xs + off, step)), 0, levels).astype(np.uint8)  # [n, 8, 32]
    qs = (q[:, 0::2] & 15) | ((q[:, 1::2] & 15) << 4)  # chunk c: sub-blocks 2c (low), 2c + 1 (high)
    parts = [d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2),
             pack_k_scales(sc.astype(np.uint8), mn.astype(np.uint8))]
    if bits == 5:
        qh = np.zeros((q.shape[0], 32), dtype=np.uint8)
        for j in range(8):
            qh |= ((q[:, j] >> 4) & 1) << j
        parts.append(qh)
    return np.concatenate(parts + [qs.reshape(-1, 128)], axis=1)


def _nearest_level(v: np.ndarray) -> np.ndarray:
    """Index of the IQ4 level nearest each value."""
    return np.abs(v[..., None] - IQ4_LEVELS).argmin(-1).astype(np.uint8)


def _iq4_nibbles(idx: np.ndarray) -> np.ndarray:
    """[..., 32] level indices -> [..., 16] bytes: element j low nibble, j + 16 high."""
    return idx[..., :16] | (idx[..., 16:] << 4)


def _iq4_nl(x: np.ndarray) -> np.ndarray:
    xb = x.reshape(-1, 32).astype(np.float64)
    d = _f16(np.abs(xb).max(-1) / 127)
    idx = _nearest_level(_div(xb, d.astype(np.float64)[:, None]))
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), _iq4_nibbles(idx)], axis=1)


def _iq4_xs(x: np.ndarray) -> np.ndarray:
    xs = x.reshape(-1, 8, 32).astype(np.float64)
    s = np.abs(xs).max(-1) / 127  # each sub-block's own scale
    d = _f16(s.max(-1) / 31)
    ls = np.clip(np.rint(_div(s, d.astype(np.float64)[:, None])), 1, 31).astype(np.int64) + 32
    step = d.astype(np.float64)[:, None] * (ls - 32)
    idx = _nearest_level(_div(xs, step[..., None]))
    scales_h = np.zeros(len(d), dtype=np.uint16)
    for j in range(8):
        scales_h |= ((ls[:, j] >> 4) & 3).astype(np.uint16) << (2 * j)
    scales_l = ((ls[:, 0::2] & 15) | ((ls[:, 1::2] & 15) << 4)).astype(np.uint8)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), scales_h.view(np.uint8).reshape(-1, 2), scales_l,
                           _iq4_nibbles(idx).reshape(-1, 128)], axis=1)


QUANTIZERS = {QT.Q4_K: lambda x: _k_quant(x, 4), QT.Q5_K: lambda x: _k_quant(x, 5), QT.IQ4_NL: _iq4_nl,
              QT.IQ4_XS: _iq4_xs}


def quantize_k(w: np.ndarray, qtype: QT) -> np.ndarray:
    """w [rows, cols] float -> the file's bytes [rows, bytes per row] in qtype."""
    rows = w.shape[0]
    return np.ascontiguousarray(QUANTIZERS[qtype](np.asarray(w, dtype=np.float32))).reshape(rows, -1)
