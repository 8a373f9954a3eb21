"""Streaming clients that leave at random points: before the first token, mid-stream, during a long
prefill. Shared by tests/e2e/test_disconnects.py (CI) and scripts/disconnects.py (200 clients)."""

from __future__ import annotations

import os
import random
import threading
import time

import httpx

LONG_PROMPT = "Tell me everything about the history of Paris. " * 120  # ~1,300 tokens: a long prefill


def leave_at_random(base: str, rng: random.Random) -> None:
    kind = rng.choice(["before-first-token", "mid-stream", "during-prefill", "non-streaming"])
    body = {"prompt": LONG_PROMPT if kind == "during-prefill" else "1, 2, 3,", "max_tokens": 200, "stream": True}
    try:
        if kind == "non-streaming":
            httpx.post(base + "/v1/completions", json={**body, "stream": False}, timeout=rng.uniform(0.05, 1.0))
            return
        with httpx.stream("POST", base + "/v1/completions", json=body, timeout=30) as r:
            wanted = 0 if kind != "mid-stream" else rng.randint(1, 30)
            for i, _ in enumerate(r.iter_lines()):
                if i >= wanted:
                    break  # leaving the block closes the connection
    except httpx.TimeoutException:
        pass


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def engine_gauges(base: str) -> dict[str, float]:
    text = httpx.get(base + "/metrics", timeout=10).text
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
            if line.startswith(("sysinfer_running_sequences", "sysinfer_waiting_sequences", "sysinfer_kv_blocks_used"))}


def wait_idle(base: str, seconds: float = 20) -> dict[str, float]:
    deadline = time.time() + seconds
    while True:
        g = engine_gauges(base)
        if all(v == 0 for v in g.values()) or time.time() > deadline:
            return g
        time.sleep(0.1)


def run_disconnects(base: str, pid: int, clients: int, concurrency: int = 8, seed: int = 0) -> dict:
    """Returns what leaked (should all be 0) and whether a bystander stream was unaffected."""
    rng = random.Random(seed)
    reference = httpx.post(base + "/v1/completions", json={"prompt": "The capital of France is", "max_tokens": 24},
                           timeout=60).json()["choices"][0]["text"]
    wait_idle(base)
    fds_before = open_fds(pid)
    bystander: list[str] = []

    def watch() -> None:  # a well-behaved stream running through all of it
        with httpx.stream("POST", base + "/v1/completions", timeout=120,
                          json={"prompt": "The capital of France is", "max_tokens": 24, "stream": True}) as r:
            bystander.extend(r.iter_lines())

    watcher = threading.Thread(target=watch)
    watcher.start()
    seeds = [rng.random() for _ in range(clients)]
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not seeds:
                    return
                s = seeds.pop()
            leave_at_random(base, random.Random(s))

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    watcher.join()
    gauges = wait_idle(base)
    import json
    text = "".join(json.loads(line[6:])["choices"][0]["text"] for line in bystander
                   if line.startswith("data: {") and json.loads(line[6:])["choices"])
    time.sleep(0.5)
    return {"gauges": gauges, "fd_growth": open_fds(pid) - fds_before, "bystander_ok": text == reference,
            "bystander_text": text, "reference": reference}
