"""Real servers for end-to-end tests and scripts: `python -m uvicorn sysinfer.api:app` on a free
loopback port, started outside the repository (so the installed build is imported, not ./sysinfer)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx

from .model_files import smollm2_q4_0

SUPPORT_DIR = os.path.dirname(os.path.abspath(__file__))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cli: bool = False, ready_timeout: float = 120, **env_overrides: str):
    """cli: run `sysinfer serve` (the deployed command: its connection limits and exit statuses)
    instead of `uvicorn sysinfer.api:app`."""
    port = free_port()
    env = {**os.environ, "SYSINFER_MODEL": smollm2_q4_0(), "SYSINFER_THREADS": "2", "SYSINFER_CTX_SIZE": "2048",
           **env_overrides}
    # The server's log goes to a file: a pipe nobody drains fills up (64 KiB of access lines) and
    # blocks the server's event loop on its next log line.
    log = tempfile.NamedTemporaryFile("w+", prefix="sysinfer-server-", suffix=".log", delete=False)
    command = ["sysinfer.cli", "serve"] if cli else ["uvicorn", "sysinfer.api:app"]
    proc = subprocess.Popen([sys.executable, "-m", *command, "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
                            cwd=SUPPORT_DIR)  # not the repo root: `python -m` would import ./sysinfer, not the build
    proc.log_path = log.name
    base = f"http://127.0.0.1:{port}"
    saw_503 = False
    deadline = time.time() + ready_timeout  # an 8B model on a loaded machine needs more
    while time.time() < deadline:
        assert proc.poll() is None, open(log.name).read()[-5000:]
        try:
            r = httpx.get(base + "/health", timeout=2)
            saw_503 |= r.status_code == 503
            if r.json().get("status") == "error":
                proc.kill()
                raise RuntimeError(f"model failed to load: {r.json()['error']}")
            if r.status_code == 200:
                return proc, base, saw_503
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not become ready")
