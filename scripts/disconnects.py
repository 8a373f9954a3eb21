#!/usr/bin/env python3
"""200 streaming clients leaving at random points against a fresh server (CI runs 40:
tests/e2e/test_disconnects.py). Prints what leaked (KV blocks, sequences, queue, file descriptors) and
whether a stream running alongside got exactly the text it gets alone.

    python scripts/disconnects.py [--clients 200] [--concurrency 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys

from support.disconnects import run_disconnects
from support.servers import start_server


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    proc, base, _ = start_server(SYSINFER_MAX_BATCH="4")
    try:
        r = run_disconnects(base, proc.pid, args.clients, args.concurrency, args.seed)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"{args.clients} disconnecting clients: engine at idle {r['gauges']}, file descriptors "
          f"{r['fd_growth']:+d}, bystander stream {'identical' if r['bystander_ok'] else 'DIFFERENT'}")
    return 0 if r["bystander_ok"] and not any(r["gauges"].values()) and r["fd_growth"] <= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
