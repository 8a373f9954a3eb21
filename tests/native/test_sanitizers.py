"""The native core under AddressSanitizer + UndefinedBehaviorSanitizer: the kernel tests, and the
forward-pass tests (every test model against the numpy reference, batched, chunked, long-context
split attention, bad step input) with the extension itself built with the sanitizers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.kernel_builds import BUILD_ROOT, REPO, run_and_check
from sysinfer import _native

SANITIZE = "-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g"
SAN_ENV = {"ASAN_OPTIONS": "abort_on_error=1:detect_leaks=0", "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}


def runtime_library(name: str) -> str:
    path = subprocess.run(["g++", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(path):
        pytest.fail(f"{name} not found: the sanitizer runtime comes with gcc (libasan8/libubsan1)")
    return path


@pytest.fixture(scope="module")
def sanitized_build() -> tuple[Path, Path]:
    """The package built with the sanitizers, installed into a folder of its own, and the kernel test
    binary from the same build (SYSINFER_BUILD_TESTS): the native core is compiled once for both."""
    site, build = BUILD_ROOT / "asan-site", BUILD_ROOT / "asan-wheel"
    shutil.rmtree(site, ignore_errors=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(site),
         f"--config-settings=cmake.define.CMAKE_CXX_FLAGS={SANITIZE}",
         "--config-settings=cmake.define.CMAKE_SHARED_LINKER_FLAGS=-fsanitize=address,undefined",
         "--config-settings=cmake.define.CMAKE_EXE_LINKER_FLAGS=-fsanitize=address,undefined",
         "--config-settings=cmake.define.SYSINFER_BUILD_TESTS=ON",
         f"--config-settings=build-dir={build}", str(REPO)],
        capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return site, build / "native" / "test_kernels"


def test_kernels_under_asan_ubsan(sanitized_build):
    binary = sanitized_build[1]
    assert "-fsanitize=address" in (binary.parent.parent / "CMakeCache.txt").read_text()
    expected = _native.info()["kernels"]
    run_and_check([str(binary), "--expect", expected], expect_tables=len(_native.info()["runnable"]) - 1,
                  env={**os.environ, **SAN_ENV, "ASAN_OPTIONS": "abort_on_error=1:detect_leaks=1"})


def test_forward_passes_under_asan_ubsan(sanitized_build, tmp_path):
    sanitized_site = sanitized_build[0]
    env = {**os.environ, **SAN_ENV, "PYTHONPATH": str(sanitized_site),
           "LD_PRELOAD": f"{runtime_library('libasan.so')}:{runtime_library('libubsan.so')}"}
    check = subprocess.run([sys.executable, "-c", "import sysinfer._native as m; print(m.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert check.returncode == 0 and str(sanitized_site) in check.stdout, check.stdout + check.stderr[-2000:]
    # Every forward-pass test whose time goes to the native core (the greedy comparisons spend
    # minutes in the numpy reference and add nothing under the sanitizers).
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-x",
                          str(REPO / "tests" / "native" / "test_forward.py"), "-k", "not greedy"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1800)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "passed" in out.stdout and "ERROR: AddressSanitizer" not in out.stderr and "runtime error" not in out.stderr
