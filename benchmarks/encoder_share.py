"""Chat decode speed while a large embedding batch runs, against without (a benchmark, not a test).

    python benchmarks/encoder_share.py --embedding-model EMB.gguf [--model CHAT.gguf] [--rounds 5]
                                       [--docs 64] [--doc-tokens 200] [--tokens 96] [--threads 2]
                                       [--share 0.25] [--slice-tokens 256] [--json FILE]

One `sysinfer serve CHAT --embedding-model EMB` (chat default: the bundled SmolLM2). Each round, in
alternating order, measures one streamed chat reply (temperature 0, `ignore_eos`, `max_tokens`
fixed) alone and while a /v1/embeddings request of `--docs` documents of about `--doc-tokens` tokens
each runs (the chat request is sent once the embedding request is in flight; the round says whether
the batch outlasted the reply). Decode tokens/s = (completion tokens - 1) / (last chunk - first chunk).
Also the batch's own time and tokens/s, alone and beside the chat. Medians over the rounds, their
ratio, the load average (`uptime`) before and after: on a shared machine only the ratio means much.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time

import httpx

from support.servers import free_port

WORDS = ("the system schedules work across cores while the kernel keeps memory pages close to the threads that "
         "read them and the server answers requests from many clients at once with vectors for retrieval").split()


def documents(n: int, tokens: int) -> list[str]:
    """n different documents of about `tokens` WordPiece tokens (one per word here; a number per doc)."""
    return [f"document {i}: " + " ".join(WORDS[(i + j) % len(WORDS)] for j in range(tokens - 5)) for i in range(n)]


def start(args) -> tuple[object, str]:
    import subprocess
    port = free_port()
    cmd = [sys.executable, "-m", "sysinfer.cli", "serve"] + ([args.model] if args.model else []) + [
        "--embedding-model", args.embedding_model, "--port", str(port), "--threads", str(args.threads),
        "--encoder-share", str(args.share), "--encoder-slice-tokens", str(args.slice_tokens), "--ctx-size", "1024",
        "--no-speculative", "--log-level", "warning"]
    log = open("/tmp/encoder_share_server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd="/tmp")
    base = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        assert proc.poll() is None, open("/tmp/encoder_share_server.log").read()[-3000:]
        time.sleep(0.1)
    raise RuntimeError("server did not start")


def chat_speed(base: str, tokens: int) -> float:
    body = {"messages": [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}],
            "max_tokens": tokens, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    times, n = [], 0
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                n = chunk["usage"]["completion_tokens"]
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                times.append(time.perf_counter())
    return (n - 1) / (times[-1] - times[0])


def embed_batch(base: str, docs: list[str], out: dict) -> None:
    began = time.perf_counter()
    r = httpx.post(base + "/v1/embeddings", json={"input": docs}, timeout=600)
    r.raise_for_status()
    out["seconds"] = time.perf_counter() - began
    out["tokens"] = r.json()["usage"]["prompt_tokens"]
    out["end"] = time.perf_counter()


def round_with_batch(base: str, docs: list[str], tokens: int) -> tuple[float, dict]:
    out: dict = {}
    t = threading.Thread(target=embed_batch, args=(base, docs, out))
    t.start()
    time.sleep(0.3)  # the batch is tokenized and running
    speed = chat_speed(base, tokens)
    chat_end = time.perf_counter()
    t.join()
    out["outlasted"] = out["end"] > chat_end
    return speed, out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--embedding-model", required=True)
    p.add_argument("--model")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--docs", type=int, default=64)
    p.add_argument("--doc-tokens", type=int, default=200)
    p.add_argument("--tokens", type=int, default=96)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--share", type=float, default=0.25)
    p.add_argument("--slice-tokens", type=int, default=256)
    p.add_argument("--json")
    args = p.parse_args()
    load_before = os.getloadavg()
    proc, base = start(args)
    try:
        docs = documents(args.docs, args.doc_tokens)
        chat_speed(base, 8)  # warm-ups
        alone_batch: dict = {}
        embed_batch(base, docs[:4], alone_batch)
        alone, beside, batches, batch_alone = [], [], [], []
        for r in range(args.rounds):
            order = ("alone", "beside") if r % 2 == 0 else ("beside", "alone")
            for what in order:
                if what == "alone":
                    alone.append(chat_speed(base, args.tokens))
                    out: dict = {}
                    embed_batch(base, docs, out)
                    batch_alone.append(out)
                else:
                    speed, out = round_with_batch(base, docs, args.tokens)
                    beside.append(speed)
                    batches.append(out)
            print(f"round {r}: chat alone {alone[-1]:.1f} tok/s, beside the batch {beside[-1]:.1f} tok/s "
                  f"(batch {batches[-1]['seconds']:.1f} s, outlasted the reply: {batches[-1]['outlasted']}); "
                  f"batch alone {batch_alone[-1]['seconds']:.1f} s", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    load_after = os.getloadavg()
    result = {
        "chat_alone_tok_s": statistics.median(alone), "chat_beside_batch_tok_s": statistics.median(beside),
        "ratio": statistics.median(beside) / statistics.median(alone),
        "paired_ratios": [b / a for a, b in zip(alone, beside)],
        "batch_alone_s": statistics.median(b["seconds"] for b in batch_alone),
        "batch_beside_chat_s": statistics.median(b["seconds"] for b in batches),
        "batch_tokens": batches[-1]["tokens"],
        "batch_alone_tok_s": batches[-1]["tokens"] / statistics.median(b["seconds"] for b in batch_alone),
        "all_outlasted": all(b["outlasted"] for b in batches), "share": args.share,
        "slice_tokens": args.slice_tokens, "load_before": load_before, "load_after": load_after,
        "cpu": _cpu(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
