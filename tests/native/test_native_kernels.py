"""Kernel tables against their generic twin (C++ test binary), natively and for aarch64 under qemu,
and the packed formats against the `gguf` package's definition of each quantization type."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as QT
from gguf.quants import dequantize, quantize
from hypothesis import given, settings
from hypothesis import strategies as st

from sysinfer import _native
from support.kernel_builds import CROSS_TOOLS, REPO, build_test_kernels, run_and_check
from support.reference_forward import q8_round_trip
from sysinfer.model.synth import random_matrix_bytes

@pytest.fixture(scope="module")
def host_binary():
    return build_test_kernels("host")


def test_host_simd_tables_equal_generic(host_binary):
    """Every SIMD table this CPU runs (avx2, and avx512 where the CPU has AVX-512 VNNI) against generic."""
    info = _native.info()
    out = run_and_check([str(host_binary), "--expect", info["kernels"]], expect_tables=len(info["runnable"]) - 1)
    for table in set(info["compiled"]) - set(info["runnable"]):
        assert f"skip {table}: not supported by this CPU" in out


X86_ONLY = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 host build")


@X86_ONLY
def test_avx2_only_cpu_gets_avx2_under_qemu(host_binary):
    """A Haswell (AVX2, FMA, F16C; no AVX-512) is given the avx2 table; avx512 is skipped, with its reason."""
    if "avx512" not in _native.info()["compiled"]:
        pytest.skip("this compiler built no avx512 table")
    out = run_and_check(["qemu-x86_64", "-cpu", "Haswell", str(host_binary), "--expect", "avx2"], 1)
    assert "skip avx512: not supported by this CPU" in out


@X86_ONLY
def test_cpu_without_avx2_gets_generic_under_qemu(host_binary):
    out = run_and_check(["qemu-x86_64", "-cpu", "Nehalem", str(host_binary), "--expect", "generic"], 0)
    assert "skip avx2: not supported by this CPU" in out


@pytest.mark.parametrize("forced", ["generic", "avx2", "avx512"])
def test_sysinfer_kernels_forces_a_table(forced, tmp_path):
    """SYSINFER_KERNELS names the table (when this CPU runs it), as `sysinfer info` reports it."""
    if forced not in _native.info()["runnable"]:
        pytest.skip(f"this CPU does not run {forced}")
    env = {**os.environ, "SYSINFER_KERNELS": forced}
    code = "from sysinfer import _native; print(_native.info()['kernels'])"
    # Run from an empty folder: `python -c` puts its working directory first on sys.path, and from the
    # repository root (as CI runs) that is the source folder ./sysinfer, which has no compiled core.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == forced


@pytest.fixture(scope="module")
def aarch64_binary():
    missing = [pkg for tool, pkg in CROSS_TOOLS.items() if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"aarch64 cross tools missing: apt-get install {' '.join(missing)} (scripts/test.sh does it as root)")
    return build_test_kernels("aarch64", f"-DCMAKE_TOOLCHAIN_FILE={REPO / 'native/cmake/aarch64-linux-gnu.cmake'}")


def test_neon_i8mm_dotprod_and_neon_equal_generic_under_qemu(aarch64_binary):
    """-cpu max has dotprod and i8mm (Armv8.6, like newer Kunpeng and Neoverse N2/V1): all three NEON tables
    run, each held equal to generic, the i8mm one bit for bit equal to dotprod, and i8mm is chosen."""
    out = run_and_check(["qemu-aarch64", "-cpu", "max", str(aarch64_binary), "--expect", "neon-i8mm"], 3)
    assert "i8mm=1" in out
    for table in ("neon", "neon-dotprod", "neon-i8mm"):
        assert f"checking {table} against generic" in out
    # The bit-for-bit comparison with neon-dotprod ran (and passed: run_and_check saw "0 failed").
    assert "neon-i8mm == neon-dotprod bit for bit: 88 gemm cases" in out


@pytest.mark.parametrize("cpu", ["neoverse-n1", "cortex-a76"])
def test_dotprod_without_i8mm_stays_on_neon_dotprod_under_qemu(aarch64_binary, cpu):
    """Armv8.2 cores with dotprod and no i8mm, as Kunpeng 920 is: neon-dotprod is chosen, neon-i8mm skipped."""
    out = run_and_check(["qemu-aarch64", "-cpu", cpu, str(aarch64_binary), "--expect", "neon-dotprod"], 2)
    assert "dotprod=1 i8mm=0" in out
    assert "skip neon-i8mm: not supported by this CPU" in out


def test_plain_neon_chosen_without_dotprod_under_qemu(aarch64_binary):
    """Cortex-A53 has no dotprod: the plain NEON table is chosen and checked."""
    out = run_and_check(["qemu-aarch64", "-cpu", "cortex-a53", str(aarch64_binary), "--expect", "neon"], 1)
    assert "skip neon-dotprod" in out
    assert "skip neon-i8mm" in out


def test_sysinfer_kernels_forces_an_aarch64_table_under_qemu(aarch64_binary):
    """SYSINFER_KERNELS picks neon-dotprod on an i8mm CPU; asking for neon-i8mm where the CPU lacks it falls
    back to the best table (neon-dotprod), with the reason on stderr."""
    env = {**os.environ, "SYSINFER_KERNELS": "neon-dotprod"}
    run_and_check(["qemu-aarch64", "-cpu", "max", str(aarch64_binary), "--expect", "neon-dotprod"], 3, env=env)
    env = {**os.environ, "SYSINFER_KERNELS": "neon-i8mm"}
    out = subprocess.run(["qemu-aarch64", "-cpu", "neoverse-n1", str(aarch64_binary), "--expect", "neon-dotprod"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-2000:]
    assert "SYSINFER_KERNELS=neon-i8mm is not available on this CPU/build; using neon-dotprod" in out.stderr


TYPES = [QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.IQ4_NL, QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K,
         QT.IQ4_XS, QT.F16, QT.F32, QT.BF16]
FLOAT = (QT.F32, QT.F16, QT.BF16)


@settings(max_examples=80, deadline=None)
@given(qtype=st.sampled_from(TYPES), rows=st.integers(1, 40), blocks=st.integers(1, 5),
       n_tok=st.integers(1, 7), seed=st.integers(0, 2**31 - 1))
def test_every_table_matches_gguf_dequantize(qtype, rows, blocks, n_tok, seed):
    """y = W x through each kernel table equals numpy over gguf.quants.dequantize(W)."""
    rng = np.random.default_rng(seed)
    cols = blocks * GGML_QUANT_SIZES[qtype][0] * (32 if qtype in FLOAT else 1)
    data = np.ascontiguousarray(random_matrix_bytes(rng, qtype, rows, cols, 0.05)).view(np.uint8).reshape(rows, -1)
    if qtype in (QT.F32, QT.F16):
        w = data.view(np.float32 if qtype == QT.F32 else np.float16).astype(np.float32)
    else:
        w = dequantize(data, qtype).astype(np.float32)
    x = rng.standard_normal((n_tok, cols)).astype(np.float32)
    x[:, rng.integers(0, cols)] *= 30  # an outlier channel, as real activations have
    # what the kernels do to activations: blocks of 32, one scale per 8 of them for the inputs of
    # Q4_K / Q5_K / Q6_K (kernels.h's act_group), half away from zero
    xin = x if qtype in FLOAT else q8_round_trip(x, 8 if qtype in (QT.Q4_K, QT.Q5_K, QT.Q6_K) else 1)
    expected = xin.astype(np.float64) @ w.T.astype(np.float64)
    for table in _native.info()["runnable"]:  # every table this CPU runs, generic included
        y = _native.gemm_check(table, int(qtype), rows, cols, data, x)
        tol = 1e-4 * (np.abs(xin) @ np.abs(w).T) + 1e-5
        assert np.all(np.abs(y - expected) <= tol), (table, float(np.abs(y - expected).max()))


def test_real_quantizer_output_round_trips():
    """Blocks written by gguf's own quantizer (not our synthesizer) decode identically."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((24, 128)).astype(np.float32)
    x = rng.standard_normal((3, 128)).astype(np.float32)
    for qtype in (QT.Q4_0, QT.Q4_1, QT.Q8_0):
        data = quantize(w, qtype)
        y = _native.gemm_check(_native.info()["kernels"], int(qtype), 24, 128, data, x)
        np.testing.assert_allclose(y, q8_round_trip(x) @ dequantize(data, qtype).T, rtol=1e-4, atol=1e-4)
