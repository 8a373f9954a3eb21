"""Deployment behaviour of a real server: SIGTERM drains 4 in-flight streams within the configured
grace period (new requests: 503 with Retry-After; /health: shutting_down), the router gauges on
/metrics, the listening address defaults and warning, the container's build and install scripts."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx

from servers import start_server

N_STREAMS = 4


def _stream(base: str, results: list, i: int) -> None:
    body = {"prompt": f"{i}, {i + 1}, {i + 2},", "max_tokens": 1900, "stream": True, "temperature": 0}
    lines: list[str] = []
    try:
        with httpx.stream("POST", base + "/v1/completions", json=body, timeout=120) as r:
            results[i] = {"status": r.status_code, "lines": lines}
            lines.extend(line for line in r.iter_lines() if line.startswith("data: "))
    except httpx.HTTPError as e:  # a cut stream: the test fails below
        results[i] = {"status": None, "lines": lines, "error": repr(e)}


def test_sigterm_drains_four_streams_within_the_grace_period():
    grace = 3.0
    proc, base, _ = start_server(SYSINFER_MAX_BATCH="4", SYSINFER_DRAIN_SECONDS=str(grace))
    try:
        results: list = [None] * N_STREAMS
        threads = [threading.Thread(target=_stream, args=(base, results, i)) for i in range(N_STREAMS)]
        for t in threads:
            t.start()
        deadline = time.time() + 60  # all four generating before the signal
        while time.time() < deadline:
            m = httpx.get(base + "/metrics", timeout=5).text
            if f"sysinfer_num_requests_running {N_STREAMS}.0" in m and all(
                    r and len(r["lines"]) > 2 for r in results):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"streams did not start: {m[-2000:]}")
        usage = float(next(line.split()[1] for line in m.splitlines()
                           if line.startswith("sysinfer_kv_cache_usage_perc ")))
        assert 0 < usage <= 1

        signalled = time.time()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        health = httpx.get(base + "/health", timeout=5)
        assert health.status_code == 503 and health.json()["status"] == "shutting_down"
        assert health.headers["retry-after"]
        refused = httpx.post(base + "/v1/chat/completions", timeout=5,
                             json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "shutting_down"
        assert int(refused.headers["retry-after"]) > 0

        for t in threads:
            t.join(timeout=grace + 30)
        ended = time.time() - signalled
        assert not any(t.is_alive() for t in threads)
        for i, r in enumerate(results):
            assert r["status"] == 200, r
            assert r["lines"][-1] == "data: [DONE]", (i, r["lines"][-3:], r.get("error"))
            last = json.loads(r["lines"][-2][6:])
            assert last["choices"][0]["finish_reason"] in ("stop", "length", "abort"), last
        # 1,900 tokens each take far longer than the grace period: they were ended by the drain
        assert any(json.loads(r["lines"][-2][6:])["choices"][0]["finish_reason"] == "abort" for r in results)
        assert ended < grace + 10, ended
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
