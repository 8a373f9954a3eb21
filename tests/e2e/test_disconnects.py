"""40 clients leaving at random points (scripts/disconnects.py runs 200): nothing leaks (KV blocks,
sequences, queue entries, file descriptors) and a stream running alongside gets exactly the text
it gets alone."""

from __future__ import annotations

from support.disconnects import run_disconnects
from support.servers import start_server


def test_random_disconnects_leak_nothing():
    proc, base, _ = start_server(SYSINFER_MAX_BATCH="4")
    try:
        result = run_disconnects(base, proc.pid, clients=40)
        assert all(v == 0 for v in result["gauges"].values()), result["gauges"]
        assert result["fd_growth"] <= 2, result  # a pooled connection or two may still be closing
        assert result["bystander_ok"], result
    finally:
        proc.terminate()
        proc.wait(timeout=30)
