"""A bounded slice of benchmarks/speculative.py (one extractive and one constrained prompt, one round,
a few tokens): the script runs, finds the outputs with and without speculation identical, and reports drafts accepted.
The slices verify every draft found (--draft-policy always): the default cost policy rightly declines drafts when
this machine's timings say they don't pay (SmolLM2 drafting for itself costs as much as it saves), which would
make the counts depend on the load.
Speed figures are the script's business, never a test's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "speculative.py"


def test_speculative_benchmark_slice(tmp_path):
    out = tmp_path / "spec.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--rounds", "1", "--max-tokens", "24", "--sets",
                        "extractive,constrained", "--prompts", "1", "--draft-policy", "always", "--json", str(out)], capture_output=True,
                       text=True, timeout=600, cwd=tmp_path)  # not the repo root: import the installed build
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(out.read_text())
    assert set(report) == {"extractive", "constrained"}
    for name, figures in report.items():
        assert figures["accepted"] > 0 and 0 < figures["acceptance"] <= 1 and figures["tokens_per_step"] > 1, name


def test_speculative_benchmark_slice_with_a_draft_model(tmp_path):
    """SmolLM2 drafting for itself: outputs identical (the script checks) and every draft accepted."""
    out = tmp_path / "spec.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--rounds", "1", "--max-tokens", "16", "--sets", "open chat",
                        "--prompts", "1", "--draft-model", "smollm2", "--model-only", "--draft-policy", "always",
                        "--json", str(out)],
                       capture_output=True,
                       text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    figures = json.loads(out.read_text())["open chat"]
    assert figures["acceptance"] == 1.0 and figures["drafted"] > 5 and 0 < figures["draft_time_share"] < 1
