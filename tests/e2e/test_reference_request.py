"""Issue 13's first bug: the deployment guide's request.py (no max_tokens) against a default
`sysinfer serve` and against `sysinfer-server MODEL -t 0.0 -n 4096`. SmolLM2 writes to the end of
what fits (about 4,000 tokens, minutes on 2 cores), so CI reads the first 64 deltas and stops the
client; scripts/reference_request.py runs the same replies to their end."""

from __future__ import annotations

import httpx
import pytest

from support.model_files import smollm2_q4_0
from support.reference_request import run_request_script, start_cli_server

SERVERS = {
    "sysinfer serve (defaults)": lambda: ["sysinfer", "serve"],
    "sysinfer-server MODEL -t 0.0 -n 4096": lambda: ["sysinfer-server", smollm2_q4_0(), "-t", "0.0", "-n", "4096"],
}


@pytest.mark.parametrize("name", SERVERS)
def test_guide_request_py_streams_on_default_servers(name, tmp_path):
    proc, port = start_cli_server(SERVERS[name]())
    try:
        code, lines, stderr = run_request_script(port, tmp_path, max_deltas=64, timeout=300)
        assert code is None, f"request.py ended early ({code}): {stderr[-2000:]}"  # stopped by us, after 64
        assert "Traceback" not in stderr and "Error" not in stderr, stderr[-2000:]
        assert lines[0].startswith("ChoiceDelta(") and "role='assistant'" in lines[0]
        assert all(line.startswith("ChoiceDelta(") for line in lines)
        assert sum("content='" in line for line in lines[1:]) >= 32  # text is flowing
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()["status"] == "ok"
        # the CLI started uvicorn itself: its start-up line names the real address
        log = open(proc.log_path, encoding="utf-8").read()
        assert f"on port {port}; chat page: http://127.0.0.1:{port}/" in log, log[-2000:]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
