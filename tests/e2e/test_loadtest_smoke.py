"""A short locust run (2 users, 25 s: the first 1.5k-token shared prompt takes seconds to prefill on
2 cores) against a real server: no request may fail."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
from pathlib import Path

from support.servers import start_server

LOCUSTFILE = Path(__file__).resolve().parents[2] / "loadtest" / "locustfile.py"


def test_locust_smoke(tmp_path):
    proc, base, _ = start_server(SYSINFER_MAX_BATCH="4", SYSINFER_CTX_SIZE="4096")
    try:
        env = {**os.environ, "LOCUST_MAX_TOKENS": "12"}
        out = subprocess.run(
            [shutil.which("locust"), "-f", str(LOCUSTFILE), "--host", base, "--headless", "-u", "2", "-r", "2",
             "-t", "25s", "--csv", str(tmp_path / "run"), "--only-summary", "ShortChat", "SharedSystemPrompt"],
            capture_output=True, text=True, timeout=120, env=env)
        rows = {r["Name"]: r for r in csv.DictReader(open(tmp_path / "run_stats.csv"))}
        assert int(rows["Aggregated"]["Failure Count"]) == 0, out.stderr[-3000:]
        assert int(rows["chat stream"]["Request Count"]) >= 2, rows
        assert int(rows["TTFT"]["Request Count"]) >= 2 and "ITL" in rows
        assert out.returncode == 0, out.stderr[-3000:]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
