"""The tensor types of llama.cpp's K-quant and IQ4 files (issue 23): every type's dequantization, from
GGUF rows and from our packed tiles, bit for bit equal to gguf-py's `gguf.quants.dequantize` (the
definition); the quantizer's own output where gguf-py has one."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as QT
from gguf.quants import dequantize, quantize

from sysinfer import _native
from sysinfer.model.model_file import SUPPORTED_TYPES
from sysinfer.model.random_blocks import BLOCK_ELEMS, pack_k_scales, random_blocks
from sysinfer.model.synth import random_matrix_bytes

QUANTIZED = sorted((t for t in SUPPORTED_TYPES if t not in (QT.F32, QT.F16)), key=int)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def _check(qtype: QT, data: np.ndarray) -> None:
    rows, row_bytes = data.shape
    be, bb = GGML_QUANT_SIZES[qtype]
    cols = row_bytes // bb * be
    ref = dequantize(data, qtype).astype(np.float32).reshape(rows, cols)
    for packed in (False, True):
        got = _native.dequantize_check(int(qtype), rows, cols, data, packed)
        assert np.array_equal(_bits(got), _bits(ref)), (qtype.name, "packed" if packed else "gguf rows")


@pytest.mark.parametrize("qtype", QUANTIZED, ids=lambda t: t.name)
@pytest.mark.parametrize("rows", [1, 8, 13])
def test_dequantize_bit_exact(qtype, rows):
    """Synthetic blocks (random codes, sane scales), rows that fill a tile or leave padding."""
    rng = np.random.default_rng(int(qtype) * 100 + rows)
    cols = 2 * max(256, GGML_QUANT_SIZES[qtype][0])
    _check(qtype, np.ascontiguousarray(random_matrix_bytes(rng, qtype, rows, cols, 0.05)).view(np.uint8).reshape(rows, -1))


@pytest.mark.parametrize("qtype", [t for t in QUANTIZED if t != QT.BF16], ids=lambda t: t.name)
def test_dequantize_bit_exact_any_bytes(qtype):
    """Every bit pattern of codes and scale bytes (only the fp16 scales kept finite): nothing in the
    layouts is left to chance by the synthesizer's choices."""
    rng = np.random.default_rng(int(qtype))
    be, bb = GGML_QUANT_SIZES[qtype]
    rows, nb = 9, 512 // be
    data = rng.integers(0, 256, size=(rows * nb, bb), dtype=np.uint8)
    fp16_at = {QT.Q2_K: (80, 82), QT.Q3_K: (108,), QT.Q6_K: (208,)}.get(qtype, (0, 2) if qtype in (
        QT.Q4_1, QT.Q5_1, QT.Q4_K, QT.Q5_K) else (0,))
    for off in fp16_at:
        data[:, off : off + 2] = rng.uniform(-1, 1, rows * nb).astype(np.float16).view(np.uint8).reshape(-1, 2)
    _check(qtype, data.reshape(rows, -1))


@pytest.mark.parametrize("qtype", [QT.Q5_0, QT.Q5_1, QT.BF16, QT.Q4_0, QT.Q4_1, QT.Q8_0], ids=lambda t: t.name)
def test_gguf_quantizer_output(qtype):
    """Blocks written by gguf-py's own quantizer (the types it can quantize) decode identically, and a
    matmul through every table agrees with numpy over the dequantized weights."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((24, 256)).astype(np.float32)
    data = quantize(w, qtype)
    _check(qtype, data)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    ref = dequantize(data, qtype).astype(np.float64)
    for table in _native.info()["runnable"]:
        y = _native.gemm_check(table, int(qtype), 24, 256, data, x)
        scale = np.abs(x) @ np.abs(ref).T
        # quantized activations: Q8_0's rounding, at most d/2 = max|x|/254 per element
        tol = (np.abs(x).max() / 254 * np.abs(ref).sum(axis=1) + 1e-4 * scale) if qtype != QT.BF16 else 1e-5 * scale
        assert np.all(np.abs(y - x.astype(np.float64) @ ref.T) <= tol + 1e-5), table


def test_k_scale_packing_round_trips():
    """random_blocks' packing of Q4_K / Q5_K six-bit scales is the one gguf-py unpacks."""
    from gguf.quants import Q4_K

    rng = np.random.default_rng(3)
    sc, mn = rng.integers(0, 64, size=(50, 8)), rng.integers(0, 64, size=(50, 8))
    got_sc, got_mn = Q4_K.get_scale_min(pack_k_scales(sc, mn))
    assert np.array_equal(got_sc, sc) and np.array_equal(got_mn, mn)


@pytest.mark.parametrize("qtype", list(BLOCK_ELEMS), ids=lambda t: t.name)
def test_random_blocks_have_the_wanted_spread(qtype):
    """Synthetic weights (synth --type, the tiny test models) have about the asked standard deviation
    and mean ~0, so a synthetic model's activations stay finite through its layers."""
    rng = np.random.default_rng(11)
    w = dequantize(random_blocks(rng, qtype, 64, 1024, 0.02), qtype)
    assert 0.01 < w.std() < 0.04, w.std()
    assert abs(w.mean()) < 0.25 * w.std()


def test_unsupported_type_ids_are_refused():
    data = np.zeros((8, 66), np.uint8)
    with pytest.raises(ValueError, match="unsupported tensor type id 16"):
        _native.dequantize_check(int(QT.IQ2_XXS), 8, 256, data, False)
