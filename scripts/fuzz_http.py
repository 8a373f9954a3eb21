#!/usr/bin/env python3
"""Long fuzzing campaign of the HTTP API (CI runs a bounded slice: tests/e2e/test_api_fuzz.py).

    python scripts/fuzz_http.py [--cases 5000] [--constrained 1000] [--encoder-cases 500] [--connections 300]
                                [--model FILE.gguf] [--seed 0]

Starts `sysinfer serve` on a free loopback port (--max-queue 4, a 2 s header timeout, at most 64
connections), sends --cases hostile bodies to each completion endpoint (OpenAI's two and Ollama's
/api/chat and /api/generate) and --constrained hostile output constraints to chat and --encoder-cases
bodies to each encoder route (strategies in tests/support/api_fuzz.py), checks every answer, then
--connections raw-socket cases (partial request lines, trickled or oversized headers, garbage,
silence, floods past the connection limit: each must be answered 408/503/400 or closed within the
header timeout), then checks the server still serves a normal request, reports healthy and has
every KV block free. Prints the tally by status.
"""

from __future__ import annotations

import argparse
import collections
import random
import socket
import sys
import time

import httpx
from hypothesis import HealthCheck, given, seed, settings

from support.api_fuzz import (ENCODER_BODIES, FUZZ_MAX_QUEUE, OLLAMA_MODEL, chat_bodies, check_answer,
                              check_encoder_answer, check_ollama_answer, completion_bodies, constrained_bodies,
                              ollama_chat_bodies, ollama_generate_bodies)
from support.servers import start_server


def campaign(client: httpx.Client, path: str, bodies, cases: int, seed_: int, tally: collections.Counter,
             label: str | None = None) -> None:
    check = (check_encoder_answer if path in ENCODER_BODIES else
             check_ollama_answer if path in ("/api/chat", "/api/generate") else check_answer)

    @seed(seed_)
    @settings(max_examples=cases, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=bodies)
    def run(body):
        tally[(label or path, check(client, path, body))] += 1

    run()


HEADER_TIMEOUT, MAX_CONNECTIONS = 2.0, 64
_PARTS = [b"GET / HTTP/1.1\r\n", b"Host: x\r\n", b"POST /v1/completions HTTP/1.1\r\n", b"X-A: " + b"a" * 70_000,
          b"\r\n", b"\x00\xff garbage", b"GET /hea", b"Content-Length: 99999999\r\n", b" ", b"\n"]


def connection_case(port: int, rng: random.Random, tally: collections.Counter) -> None:
    """One raw-socket case: some request fragments, sent at once or a byte at a time, then silence.
    The server must answer or close the connection within the header timeout (plus slack)."""
    data = b"".join(rng.choice(_PARTS) for _ in range(rng.randint(0, 4)))
    trickle = rng.random() < 0.3
    with socket.create_connection(("127.0.0.1", port), timeout=HEADER_TIMEOUT + 10) as s:
        start = time.time()
        try:
            for i in range(0, len(data), 1 if trickle else len(data) or 1):
                s.sendall(data[i:i + (1 if trickle else len(data))])
                if trickle:
                    time.sleep(0.05)
                if time.time() - start > HEADER_TIMEOUT + 2:
                    break
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        except (ConnectionError, TimeoutError) as e:
            assert not isinstance(e, TimeoutError), f"still open after {time.time() - start:.1f} s: {data[:80]!r}"
            reply = b""
    took = time.time() - start
    assert took < HEADER_TIMEOUT + 5 or trickle and took < HEADER_TIMEOUT + 8, (took, data[:80])
    tally[("connection", reply[9:12].decode() or "closed")] += 1


def connection_flood(port: int, tally: collections.Counter) -> None:
    """MAX_CONNECTIONS idle sockets, then one more: it gets 503 at once; all are closed in time."""
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_CONNECTIONS)]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
            assert extra.recv(4096).startswith(b"HTTP/1.1 503"), "no 503 past max_connections"
            tally[("connection", "flood 503")] += 1
    finally:
        for s in held:
            s.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=5000, help="bodies per endpoint")
    ap.add_argument("--model", help="GGUF file (default: SmolLM2 Q4_0 from the test cache)")
    ap.add_argument("--constrained", type=int, default=1000, help="hostile output constraints (chat)")
    ap.add_argument("--connections", type=int, default=300, help="raw-socket cases")
    ap.add_argument("--encoder-cases", type=int, default=500,
                    help="bodies per encoder route (/v1/embeddings, /embed, /v1/rerank, /api/embed), served by "
                         "all-MiniLM-L6-v2 and a random reranker from the test cache (0: none, no encoders loaded)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    env = {"SYSINFER_MAX_BATCH": "4", "SYSINFER_MAX_QUEUE": str(FUZZ_MAX_QUEUE),
           "SYSINFER_HEADER_TIMEOUT": str(HEADER_TIMEOUT), "SYSINFER_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
           "SYSINFER_MODEL_NAME": OLLAMA_MODEL}
    env |= {"SYSINFER_MODEL": args.model} if args.model else {}
    if args.encoder_cases:
        from support.encoder_files import minilm_gguf, xlmr_gguf
        env |= {"SYSINFER_EMBEDDING_MODEL": minilm_gguf("F16"), "SYSINFER_EMBEDDING_MODEL_NAME": "fuzz-embed",
                "SYSINFER_RERANK_MODEL": xlmr_gguf("rerank")}
    proc, base, _ = start_server(cli=True, **env)
    tally: collections.Counter = collections.Counter()
    start = time.time()
    try:
        with httpx.Client(base_url=base, timeout=120) as client:
            for path, bodies in (("/v1/chat/completions", chat_bodies), ("/v1/completions", completion_bodies),
                                 ("/api/chat", ollama_chat_bodies), ("/api/generate", ollama_generate_bodies)):
                campaign(client, path, bodies, args.cases, args.seed, tally)
            campaign(client, "/v1/chat/completions", constrained_bodies, args.constrained, args.seed, tally,
                     "constrained")
            for path, bodies in (ENCODER_BODIES.items() if args.encoder_cases else ()):
                campaign(client, path, bodies, args.encoder_cases, args.seed, tally)
            port, rng = int(base.rsplit(":", 1)[1]), random.Random(args.seed)
            for _ in range(args.connections):
                connection_case(port, rng, tally)
            if args.connections:
                connection_flood(port, tally)
                time.sleep(HEADER_TIMEOUT + 1)  # the held sockets are gone
            assert client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}).status_code == 200
            assert client.get("/health").json()["status"] == "ok"
            metrics = client.get("/metrics").text
            used = [line for line in metrics.splitlines() if line.startswith("sysinfer_kv_blocks_used ")]
            assert used and float(used[0].split()[1]) == 0, used
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    for (path, status), n in sorted(tally.items(), key=str):
        print(f"{path:24} {status}: {n}")
    print(f"{sum(tally.values())} cases in {time.time() - start:.0f} s, 0 server errors; healthy, all KV blocks free")
    return 0


if __name__ == "__main__":
    sys.exit(main())
