"""A bounded slice of benchmarks/serve_streams.py (sysinfer only, 2 streams, a few tokens, 1 round):
the script starts `sysinfer serve`, drives it with the real AsyncOpenAI client and reports every
stream's tokens; without --llama-server it measures sysinfer alone. Speed figures are the script's
business, never a test's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_streams.py"


def test_serve_streams_slice(tmp_path):
    out = tmp_path / "streams.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--streams", "2", "--tokens", "6", "--rounds", "1",
                        "--warmup-tokens", "2", "--json", str(out)], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)  # not the repo root: import the installed build
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(out.read_text())
    assert "family" in report["cpu"]
    [row] = report["rows"]  # no llama-server row without a binary
    assert row["server"] == "sysinfer" and row["streams"] == 2
    [measured] = row["rounds"]
    # ignore_eos: every stream generates exactly max_tokens, counted from the usage chunk
    assert measured["counted_by"] == "usage" and measured["per_stream_tokens"] == [6, 6]
    assert measured["tok_s"] > 0 and 0 < measured["ttft_median"] <= measured["ttft_p90"] < measured["wall"]
    assert "llama-server" not in r.stdout


def test_serve_streams_refuses_a_missing_llama_server(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "--streams", "1", "--llama-server", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2 and "not an executable" in r.stderr


def test_serve_streams_long_prompt_slice(tmp_path):
    """--prompt-tokens: streamed completions of prompts of exactly that many tokens (by the server's
    own count), each request's prompt new to the server."""
    out = tmp_path / "ttft.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--streams", "1", "--tokens", "3", "--rounds", "2",
                        "--warmup-tokens", "2", "--prompt-tokens", "300", "--json", str(out)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    [row] = json.loads(out.read_text())["rows"]
    for measured in row["rounds"]:
        assert measured["prompt_tokens"] == [300] and measured["per_stream_tokens"] == [3]
        # every prompt new to the server: no prefix-cache hit, each TTFT holds the whole prefill
        assert measured["cached_tokens"] == [0]
