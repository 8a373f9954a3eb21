"""`sysinfer serve` as a new user meets it (issue 22's first-run defects): a model that can't load,
a port in use and an out-of-range flag each end the command with a clear line and a non-zero status
(the stay-up-and-report state is `uvicorn sysinfer.api:app`'s, tested in test_api.py)."""

from __future__ import annotations

import shutil
import socket
import subprocess

from support.servers import free_port


def serve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    exe = shutil.which("sysinfer")
    assert exe, "the sysinfer console script is not installed"
    return subprocess.run([exe, "serve", *args], capture_output=True, text=True, timeout=timeout)


def test_a_model_that_cannot_load_ends_serve(tmp_path):
    """It printed the load error and then kept running (health 503) until killed."""
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 40)
    for model in (str(broken), str(tmp_path / "missing.gguf")):
        out = serve(model, "--port", str(free_port()))
        assert out.returncode == 1, (out.stdout, out.stderr)
        assert "sysinfer: error: the model could not be loaded" in out.stderr
        assert "sysinfer: serving" not in out.stdout + out.stderr and "Traceback" not in out.stderr


def test_a_port_in_use_says_so_and_ends_serve():
    """uvicorn's bind error was followed by `sysinfer: serving ... on port N`."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        out = serve("--port", str(port), "--host", "127.0.0.1", timeout=60)
    assert out.returncode == 1
    assert f"sysinfer: error: could not bind 127.0.0.1 port {port}" in out.stderr
    assert "serving" not in out.stdout + out.stderr and "Traceback" not in out.stderr


def test_a_port_out_of_range_is_an_argument_error():
    """`--port 99999` ended in uvicorn's OverflowError traceback."""
    out = serve("--port", "99999", timeout=60)
    assert out.returncode == 2
    assert "argument --port: must be between 1 and 65535, got 99999" in out.stderr and "Traceback" not in out.stderr
