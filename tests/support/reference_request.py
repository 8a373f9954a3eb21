"""The deployment guide's request.py (model, a system and a user message, stream=True, nothing else),
run verbatim against servers started as users start them: `sysinfer serve` with every default, and
the reference invocation `sysinfer-server MODEL -t 0.0 -n 4096`. Used by
tests/e2e/test_reference_request.py (a bounded slice) and scripts/reference_request.py (whole replies).

Issue 13's bug: with the defaults, a request without max_tokens asked for 4096 tokens and got 400
"4096 tokens exceed the KV cache (4080 tokens)" before its first chunk.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from .servers import free_port

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"


def guide_request_script(port: int) -> str:
    """The guide's Python example as written, pointed at `port` instead of 7860 (the only change)."""
    text = GUIDE.read_text(encoding="utf-8")
    block = re.search(r"^(    from openai import OpenAI.*?)\n\n", text, re.S | re.M).group(1)
    code = "\n".join(line[4:] for line in block.splitlines())
    assert "max_tokens" not in code and "stream=True" in code, "the guide's example changed: review this test"
    return code.replace(":7860/", f":{port}/")


def start_cli_server(argv: list[str]) -> tuple[subprocess.Popen, int]:
    """`argv` (a console script and its flags) on a free loopback port; returns once /health is 200."""
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", prefix="sysinfer-cli-", suffix=".log", delete=False)
    proc = subprocess.Popen([shutil.which(argv[0]), *argv[1:], "--port", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, text=True, cwd=tempfile.gettempdir())
    proc.log_path = log.name
    deadline = time.time() + 180
    while time.time() < deadline:
        assert proc.poll() is None, Path(log.name).read_text()[-3000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, port
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become ready: " + Path(log.name).read_text()[-3000:])


def run_request_script(port: int, workdir: Path, max_deltas: int | None = None, timeout: float = 1800):
    """Runs request.py; stops it after `max_deltas` printed deltas (None: let it finish).
    Returns (exit code or None if stopped, printed lines, stderr)."""
    script = workdir / "request.py"
    script.write_text(guide_request_script(port), encoding="utf-8")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=workdir)
    lines: list[str] = []
    deadline = time.time() + timeout
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if (max_deltas is not None and len(lines) >= max_deltas) or time.time() > deadline:
                proc.kill()
                proc.wait()
                return None, lines, proc.stderr.read()
        return proc.wait(), lines, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
