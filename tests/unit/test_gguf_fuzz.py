"""A bounded slice of the GGUF fuzzing (scripts/fuzz_gguf.py) for CI: the regression inputs, a
targeted sweep of every header field of two tiny models, structure-aware random mutations of the
tiny models and of the real SmolLM2 header, and a short coverage-guided atheris run where atheris
is installed. Every run is a child process with its own address-space limit, so an unbounded
allocation fails the test instead of taking the machine; all of it takes well under 60 s.

Longer runs: `python scripts/fuzz_gguf.py atheris -max_total_time=3600`, `... mutate --runs 100000`,
`... sweep` (every field of every seed, SmolLM2 included).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "fuzz_gguf.py"
REGRESSIONS = ROOT / "tests" / "data" / "gguf_regressions.json"  # recipes: edits of the tiny llama header
MAX_MB = 1024  # address space of each fuzzing child (it idles at about 200 MiB)


def fuzz(*args: str, timeout: float = 120, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                         cwd=str(cwd or Path(__file__).parent), env={**os.environ, **(env or {})})
    print(out.stdout[-5000:], out.stderr[-5000:])
    return out


def summary(out: subprocess.CompletedProcess) -> tuple[int, int]:
    m = re.search(r": (\d+) inputs in [\d.]+ s, (\d+) failures", out.stdout)
    assert m, out.stdout[-3000:] + out.stderr[-3000:]
    return int(m.group(1)), int(m.group(2))


def test_regression_inputs(tmp_path):
    """Every input that once failed, rebuilt from its recipe (no binary files in the repository)."""
    n_recipes = len(json.loads(REGRESSIONS.read_text()))
    assert n_recipes >= 10
    out = fuzz("replay", "--max-mb", str(MAX_MB), "--crash-dir", str(tmp_path))
    assert out.returncode == 0 and summary(out) == (n_recipes, 0)
    # each is refused (none of them is a loadable model)
    assert out.stdout.count(": refused: ") == n_recipes


def test_field_sweep_tiny_models(tmp_path):
    """Every count, length, type, n_dims, dimension, offset and metadata value of two tiny models
    (gpt2 and SentencePiece vocabularies) set to 0, 1, 2^31, 2^32-1, 2^58+49152, 2^63, 2^64-1."""
    out = fuzz("sweep", "--only", "tiny-llama.gguf", "--only", "tiny-baichuan-spm", "--show-accepted", "1000",
               "--max-mb", str(MAX_MB), "--crash-dir", str(tmp_path))
    runs, failures = summary(out)
    assert out.returncode == 0 and failures == 0 and runs > 1500
    # mutants that still load changed a value to another valid one (a token id, the context length,
    # a tensor's type to F32/F16 with room for it): never a count, length, n_dims, dim or offset
    loaded = re.findall(r"loads: .*\((\w+) at \d+\) = \d+", out.stdout)
    assert set(loaded) <= {"value", "type"}, loaded


def test_random_mutations_tiny_models(tmp_path):
    out = fuzz("mutate", "--tiny-only", "--runs", "2000", "--seed", "15", "--max-mb", str(MAX_MB),
               "--crash-dir", str(tmp_path))
    assert out.returncode == 0 and summary(out) == (2000, 0)


def test_random_mutations_smollm2_header(tmp_path):
    from sysinfer.model.default_model import INSTALL_COMMAND, default_model_path

    try:
        default_model_path()
    except FileNotFoundError:
        pytest.skip(f"SmolLM2 is missing: {INSTALL_COMMAND}")
    out = fuzz("mutate", "--smollm2-only", "--runs", "40", "--seed", "7", "--max-mb", str(MAX_MB),
               "--crash-dir", str(tmp_path))
    assert out.returncode == 0 and summary(out) == (40, 0)


def test_atheris_short_run(tmp_path):
    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is not installed (x86-64 wheels only)")
    out = fuzz("atheris", "-max_total_time=12", "-timeout=10", f"-artifact_prefix={tmp_path}/",
               env={"FUZZ_SEEDS": "tiny", "FUZZ_MAX_MB": str(MAX_MB)}, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-5000:]
    m = re.search(r"Done (\d+) runs", out.stderr)
    assert m and int(m.group(1)) > 100, out.stderr[-3000:]
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("timeout-*")) and not list(tmp_path.glob("oom-*"))
