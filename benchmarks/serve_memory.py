"""Resident memory of `sysinfer serve` while it serves, against file size + KV cache + 300 MB.

    python benchmarks/serve_memory.py MODEL.gguf [--threads 2] [--ctx-size 4096] [--port 7871]

Starts the server as a user would (the installed console script, default single-batch settings),
waits for /health, runs one chat completion so every step buffer has been touched, then reads the
server's VmRSS and VmHWM from /proc. The KV cache size is the one the server allocated (`--ctx-size`
tokens per sequence, rounded up to whole blocks, one sequence, plus one spare block).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import httpx

from sysinfer.config import ServerConfig, kv_block_bytes, kv_blocks_for
from sysinfer.model.model_file import read_model_file


def proc_status_bytes(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx-size", type=int, default=4096)
    ap.add_argument("--port", type=int, default=7871)
    args = ap.parse_args()

    mf = read_model_file(args.model)
    hp = mf.hparams
    cfg = ServerConfig(ctx_size=args.ctx_size)
    blocks = kv_blocks_for(cfg, hp, weight_bytes=mf.file_bytes)
    kv_bytes = kv_block_bytes(hp, cfg.block_size) * blocks
    file_bytes = os.path.getsize(args.model)

    cmd = ["sysinfer", "serve", args.model, "--port", str(args.port), "--threads", str(args.threads),
           "--ctx-size", str(args.ctx_size)]
    server = subprocess.Popen(cmd, cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{args.port}"
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with code {server.returncode}")
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        model_id = httpx.get(base + "/v1/models", timeout=10).json()["data"][0]["id"]
        reply = httpx.post(base + "/v1/chat/completions", timeout=600, json={
            "model": model_id, "max_tokens": 8, "messages": [{"role": "user", "content": "Hello"}]})
        reply.raise_for_status()
        rss, hwm = proc_status_bytes(server.pid, "VmRSS"), proc_status_bytes(server.pid, "VmHWM")
    finally:
        server.terminate()
        server.wait(timeout=60)
    limit = file_bytes + kv_bytes + 300 * 10**6
    mib = lambda n: f"{n / 2**20:.0f} MiB"  # noqa: E731
    print(f"file {mib(file_bytes)}, KV cache {mib(kv_bytes)} ({blocks} blocks of {cfg.block_size}), "
          f"RSS while serving {mib(rss)}, peak {mib(hwm)}; limit file + KV + 300 MB = {mib(limit)}: "
          f"{'within' if rss <= limit else 'OVER'} by {mib(abs(limit - rss))}")
    return 0 if rss <= limit else 1


if __name__ == "__main__":
    sys.exit(main())
