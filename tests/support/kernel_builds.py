"""Builds of the C++ kernel test binary (host, aarch64 cross, sanitizers) and the check of its output."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_ROOT = Path(os.environ.get("SYSINFER_TEST_CACHE", Path.home() / ".cache" / "sysinfer")) / "kernel-tests"
CROSS_TOOLS = {"aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu", "qemu-aarch64": "qemu-user"}


def build_test_kernels(name: str, *cmake_args: str) -> Path:
    # One build folder per checkout: CMake refuses a build folder configured for another source.
    build = BUILD_ROOT / f"{name}-{hashlib.sha1(str(REPO).encode()).hexdigest()[:10]}"
    subprocess.run(["cmake", "-S", str(REPO), "-B", str(build), "-DSYSINFER_BUILD_TESTS=ON",
                    "-DCMAKE_BUILD_TYPE=Release", *cmake_args], check=True, capture_output=True, text=True)
    done = subprocess.run(["cmake", "--build", str(build), "-j2", "--target", "test_kernels"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return build / "native" / "test_kernels"


def run_and_check(cmd: list[str], expect_tables: int, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert out.stdout.strip().endswith("0 failed"), out.stdout[-2000:]
    assert f"SIMD tables tested: {expect_tables}" in out.stdout, out.stdout[-2000:]
    return out.stdout
