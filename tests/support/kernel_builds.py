"""Builds of the C++ kernel test binary (host, aarch64 cross, sanitizers) and the check of its output."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_ROOT = Path(os.environ.get("SYSINFER_TEST_CACHE", Path.home() / ".cache" / "sysinfer")) / "kernel-tests"
CROSS_TOOLS = {"aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu", "qemu-aarch64": "qemu-user"}


def package_build_dir() -> tuple[Path, str] | None:
    """The CMake folder `pip install .` built this checkout's package in (pyproject's build-dir), and the
    cmake that configured it (an isolated build's cmake may be gone: then None, and a folder of our own)."""
    for cache in sorted((REPO / "build").glob("*/CMakeCache.txt")):
        text = cache.read_text(errors="replace")
        cmake = re.search(r"^CMAKE_COMMAND:INTERNAL=(.*)$", text, re.M)
        if (f"CMAKE_HOME_DIRECTORY:INTERNAL={REPO}\n" in text and "CMAKE_BUILD_TYPE:STRING=Release\n" in text
                and cmake and os.access(cmake.group(1), os.X_OK)):
            return cache.parent, cmake.group(1)
    return None


def build_in_package_folder(build: Path, cmake: str) -> Path:
    """The host's test binary beside the package's own objects: the native core, already compiled by
    `pip install .` with the same flags, is not compiled again (CI's fresh-clone run spent 43 s on that).
    The folder's configuration is left as found (SYSINFER_BUILD_TESTS off), so later package builds
    don't build the test binary. (-S: with -B alone cmake takes the working folder as the source, and
    the tests run from /tmp.)"""
    subprocess.run([cmake, "-S", str(REPO), "-B", str(build), "-DSYSINFER_BUILD_TESTS=ON"], check=True,
                   capture_output=True, text=True)
    try:
        done = subprocess.run([cmake, "--build", str(build), "-j2", "--target", "test_kernels"],
                              capture_output=True, text=True)
    finally:
        subprocess.run([cmake, "-S", str(REPO), "-B", str(build), "-DSYSINFER_BUILD_TESTS=OFF"], check=True,
                       capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return build / "native" / "test_kernels"


def build_test_kernels(name: str, *cmake_args: str) -> Path:
    if name == "host" and not cmake_args and (shared := package_build_dir()) is not None:
        return build_in_package_folder(*shared)
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
