#!/usr/bin/env python3
"""Long fuzzing campaign of the HTTP API (CI runs a bounded slice: tests/e2e/test_api_fuzz.py).

    python scripts/fuzz_http.py [--cases 5000] [--model FILE.gguf] [--seed 0]

Starts `sysinfer serve` on a free loopback port, sends --cases hostile bodies to each completion
endpoint (strategies in tests/support/api_fuzz.py), checks every answer, then checks the server still
serves a normal request, reports healthy and has every KV block free. Prints the tally by status.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import httpx
from hypothesis import HealthCheck, given, seed, settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))

from api_fuzz import chat_bodies, check_answer, completion_bodies  # noqa: E402
from servers import start_server  # noqa: E402


def campaign(client: httpx.Client, path: str, bodies, args, tally: collections.Counter) -> None:
    @seed(args.seed)
    @settings(max_examples=args.cases, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=bodies)
    def run(body):
        tally[(path, check_answer(client, path, body))] += 1

    run()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=5000, help="bodies per endpoint")
    ap.add_argument("--model", help="GGUF file (default: SmolLM2 Q4_0 from the test cache)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    env = {"SYSINFER_MAX_BATCH": "4"} | ({"SYSINFER_MODEL": args.model} if args.model else {})
    proc, base, _ = start_server(**env)
    tally: collections.Counter = collections.Counter()
    start = time.time()
    try:
        with httpx.Client(base_url=base, timeout=120) as client:
            for path, bodies in (("/v1/chat/completions", chat_bodies), ("/v1/completions", completion_bodies)):
                campaign(client, path, bodies, args, tally)
            assert client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}).status_code == 200
            assert client.get("/health").json()["status"] == "ok"
            metrics = client.get("/metrics").text
            used = [line for line in metrics.splitlines() if line.startswith("sysinfer_kv_blocks_used ")]
            assert used and float(used[0].split()[1]) == 0, used
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    for (path, status), n in sorted(tally.items()):
        print(f"{path:24} {status}: {n}")
    print(f"{sum(tally.values())} cases in {time.time() - start:.0f} s, 0 server errors; healthy, all KV blocks free")
    return 0


if __name__ == "__main__":
    sys.exit(main())
