"""Random blocks of the Q5, IQ4 and K-quant formats, drawn in their on-disk layout (random codes, scales
sized for a wanted standard deviation), for synthetic models and tests. The layouts are the ones
native/src/kernels.h describes (gguf-py's dequantize is the definition the tests hold them to)."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT

IQ4_LEVELS = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.float64)
_Q5_STD = np.sqrt((32**2 - 1) / 12)
_Q4_STD = np.sqrt((16**2 - 1) / 12)
_Q2_STD = np.sqrt((4**2 - 1) / 12)
_Q3_STD = np.sqrt((8**2 - 1) / 12)
_IQ4_STD = float(IQ4_LEVELS.std())

BLOCK_ELEMS = {QT.Q5_0: 32, QT.Q5_1: 32, QT.IQ4_NL: 32, QT.Q2_K: 256, QT.Q3_K: 256, QT.Q4_K: 256, QT.Q5_K: 256,
               QT.IQ4_XS: 256}


def _fp16(values: np.ndarray) -> np.ndarray:
    """float values [n] -> their fp16 bytes [n, 2]."""
    return np.asarray(values, dtype=np.float32).astype(np.float16).view(np.uint8).reshape(-1, 2)


def pack_k_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """Q4_K / Q5_K: 8 six-bit scales and mins per block [n, 8] -> the 12 packed bytes [n, 12]."""
    sc, mn = sc.astype(np.uint8), mn.astype(np.uint8)
    out = np.zeros((sc.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = (mn[:, 0:4] & 63) | ((mn[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 15) | ((mn[:, 4:8] & 15) << 4)
    return out


def pack_q3_scales(s: np.ndarray) -> np.ndarray:
    """Q3_K: 16 six-bit scales (stored value, 0..63) per block [n, 16] -> 12 packed bytes [n, 12]."""
    s = s.astype(np.uint8)
    out = np.zeros((s.shape[0], 12), dtype=np.uint8)
    for i in range(16):
        out[:, i % 8] |= (s[:, i] & 15) << (4 * (i // 8))
        out[:, 8 + i % 4] |= (s[:, i] >> 4) << (2 * (i // 4))
    return out


def _signed_scales(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Six-bit signed scale codes (value - 32 in +-8..31), either sign."""
    mag = rng.integers(8, 32, size=shape)
    return np.where(rng.random(shape) < 0.5, 32 - mag, 32 + np.minimum(mag, 31))


def random_blocks(rng: np.random.Generator, qtype: QT, rows: int, cols: int, std: float) -> np.ndarray:
    """rows x cols weights of one of BLOCK_ELEMS' types with about the given standard deviation, as the
    file's bytes [rows, bytes per row]."""
    be = BLOCK_ELEMS[qtype]
    if cols % be:
        raise ValueError(f"{qtype.name} rows must be a multiple of {be} long, got {cols}")
    n = rows * (cols // be)
    jitter = rng.uniform(0.5, 1.5, size=n)

    def codes(k: int) -> np.ndarray:
        return rng.integers(0, 256, size=(n, k), dtype=np.uint8)

    if qtype in (QT.Q5_0, QT.Q5_1):
        d = std / _Q5_STD * jitter
        parts = [_fp16(d)]
        if qtype == QT.Q5_1:  # x = d*q + m with q in 0..31: m = -16d centres it
            parts.append(_fp16(-16 * d.astype(np.float16).astype(np.float32)))
        blocks = np.concatenate(parts + [codes(4), codes(16)], axis=1)
    elif qtype == QT.IQ4_NL:
        blocks = np.concatenate([_fp16(std / _IQ4_STD * jitter), codes(16)], axis=1)
    elif qtype in (QT.Q4_K, QT.Q5_K):
        sc = rng.integers(32, 64, size=(n, 8))
        mn = rng.integers(32, 64, size=(n, 8))
        q_std, q_mean = (_Q4_STD, 7.5) if qtype == QT.Q4_K else (_Q5_STD, 15.5)
        d = std / (q_std * 48) * jitter
        dmin = d * q_mean  # d * sc * mean(q) - dmin * m: ~0 on average (sc ~ m)
        parts = [_fp16(d), _fp16(dmin), pack_k_scales(sc, mn)]
        if qtype == QT.Q5_K:
            parts.append(codes(32))
        blocks = np.concatenate(parts + [codes(128)], axis=1)
    elif qtype == QT.Q2_K:
        scales = (rng.integers(8, 16, size=(n, 16)) | (rng.integers(8, 16, size=(n, 16)) << 4)).astype(np.uint8)
        d = std / (_Q2_STD * 12) * jitter
        blocks = np.concatenate([scales, codes(64), _fp16(d), _fp16(d * 1.5)], axis=1)
    elif qtype == QT.Q3_K:
        d = std / (_Q3_STD * 20) * jitter
        blocks = np.concatenate([codes(32), codes(64), pack_q3_scales(_signed_scales(rng, (n, 16))), _fp16(d)], axis=1)
    elif qtype == QT.IQ4_XS:
        ls = _signed_scales(rng, (n, 8)).astype(np.uint16)
        scales_h = np.zeros(n, dtype=np.uint16)
        for j in range(8):
            scales_h |= (ls[:, j] >> 4) << (2 * j)
        scales_l = ((ls[:, 0::2] & 15) | ((ls[:, 1::2] & 15) << 4)).astype(np.uint8)
        d = std / (_IQ4_STD * 20) * jitter
        blocks = np.concatenate([_fp16(d), scales_h.view(np.uint8).reshape(-1, 2), scales_l, codes(128)], axis=1)
    else:
        raise ValueError(f"no random blocks for {qtype.name}")
    return np.ascontiguousarray(blocks).reshape(rows, -1)
