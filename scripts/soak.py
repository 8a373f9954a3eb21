#!/usr/bin/env python3
"""Load and soak run (issue 15): locust's streaming users against a fresh `sysinfer serve`, then the
checks a long-running deployment needs. Not a timed test: run it by hand, quote its output.

    python scripts/soak.py [--users 32] [--minutes 10] [--max-batch 8] [--max-queue 256] [--model F.gguf]

Reports failed requests, resident memory after warm-up and at the end (within 5 %?), the engine at
idle afterwards (every KV block free, nothing running or queued), and TTFT / inter-token latency
p50 and p99 from locust's own statistics. Run once with --max-batch 8 and once with --max-batch 1
(the default: requests queue in arrival order; 429 only past --max-queue).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from support.disconnects import wait_idle
from support.servers import start_server

LOCUSTFILE = Path(__file__).resolve().parent.parent / "loadtest" / "locustfile.py"


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=32)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=60, help="seconds before the reference RSS is taken")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-queue", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=64, help="LOCUST_MAX_TOKENS (LongOutput asks 4x)")
    ap.add_argument("--kv-blocks", type=int, help="a small KV cache, so sequences are preempted under load")
    ap.add_argument("--model")
    args = ap.parse_args()
    env = {"SYSINFER_MAX_BATCH": str(args.max_batch), "SYSINFER_MAX_QUEUE": str(args.max_queue),
           "SYSINFER_CTX_SIZE": "4096"} | ({"SYSINFER_MODEL": args.model} if args.model else {}) \
        | ({"SYSINFER_KV_BLOCKS": str(args.kv_blocks)} if args.kv_blocks else {})
    proc, base, _ = start_server(**env)
    out_dir = Path(tempfile.mkdtemp(prefix="soak-"))
    try:
        locust = subprocess.Popen(
            [shutil.which("locust"), "-f", str(LOCUSTFILE), "--host", base, "--headless", "-u", str(args.users),
             "-r", "4", "-t", f"{int(args.minutes * 60)}s", "--csv", str(out_dir / "run"), "--only-summary"],
            env={**os.environ, "LOCUST_MAX_TOKENS": str(args.max_tokens)},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(args.warmup)
        rss_warm = rss_mib(proc.pid)
        locust.wait(timeout=args.minutes * 60 + 120)
        rss_end = rss_mib(proc.pid)
        idle = wait_idle(base, 60)
        metrics = httpx.get(base + "/metrics", timeout=10).text
        preemptions = next(float(line.split()[1]) for line in metrics.splitlines()
                           if line.startswith("sysinfer_preemptions "))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    rows = {r["Name"]: r for r in csv.DictReader(open(out_dir / "run_stats.csv"))}
    agg, ttft, itl = rows["Aggregated"], rows["TTFT"], rows["ITL"]
    print(f"users {args.users}, {args.minutes:g} min, --max-batch {args.max_batch}, --max-queue {args.max_queue}")
    print(f"requests {rows['chat stream']['Request Count']}, failed {agg['Failure Count']}")
    print(f"RSS after warm-up {rss_warm:.0f} MiB, at the end {rss_end:.0f} MiB ({rss_end / rss_warm - 1:+.1%})")
    print(f"at idle afterwards: {idle}; preemptions during the run: {preemptions:.0f}")
    print(f"TTFT p50 {ttft['50%']} ms, p99 {ttft['99%']} ms; ITL p50 {itl['50%']} ms, p99 {itl['99%']} ms")
    ok = int(agg["Failure Count"]) == 0 and abs(rss_end / rss_warm - 1) <= 0.05 and not any(idle.values())
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
