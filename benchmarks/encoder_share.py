"""Chat decode speed while a large embedding batch runs, against without (a benchmark, not a test).

    python benchmarks/encoder_share.py --embedding-model EMB.gguf [--model CHAT.gguf] [--rounds 5]
                                       [--docs 64] [--doc-tokens 200] [--tokens 96] [--threads 2]
                                       [--share 0.25] [--slice-tokens 256] [--batch-alone] [--json FILE]

One `sysinfer serve CHAT --embedding-model EMB` (chat default: the bundled SmolLM2). Each round, in
alternating order, measures one streamed chat reply (temperature 0, `ignore_eos`, `max_tokens`
fixed) alone and while a /v1/embeddings request of `--docs` documents of about `--doc-tokens` tokens
each runs (the chat request is sent once the embedding request is in flight; the round says whether
the batch was still running when the reply ended; the batch is then abandoned, and the server stops it
at its next slice). Decode tokens/s = (completion tokens - 1) / (last chunk - first chunk). With
--batch-alone, the whole batch is also timed alone once. Medians over the rounds, their ratio, the
paired ratios, the longest pause between two chunks of a reply (median over rounds), the load
average before and after: on a shared machine only the ratio means much.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
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
    from sysinfer.model.default_model import default_model_path
    # the chat file named explicitly: `--embedding-model` without one serves embeddings only
    cmd = [sys.executable, "-m", "sysinfer.cli", "serve", args.model or default_model_path()] + [
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


async def chat_speed(client: httpx.AsyncClient, base: str, tokens: int) -> float:
    body = {"messages": [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}],
            "max_tokens": tokens, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    times, n = [], 0
    async with client.stream("POST", base + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                n = chunk["usage"]["completion_tokens"]
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                times.append(time.perf_counter())
    chat_speed.gaps.append(max(b - a for a, b in zip(times, times[1:])))  # the longest pause in the stream
    return (n - 1) / (times[-1] - times[0])


chat_speed.gaps = []


async def embed_batch(client: httpx.AsyncClient, base: str, docs: list[str]) -> dict:
    began = time.perf_counter()
    r = await client.post(base + "/v1/embeddings", json={"input": docs}, timeout=3600)
    r.raise_for_status()
    return {"seconds": time.perf_counter() - began, "tokens": r.json()["usage"]["prompt_tokens"]}


async def round_with_batch(client: httpx.AsyncClient, base: str, docs: list[str], tokens: int) -> tuple[float, bool]:
    """The chat reply's speed while the batch runs; the batch is then abandoned (the server stops it
    at its next slice), so rounds don't overlap. Also: whether the batch was still running at the end."""
    batch = asyncio.ensure_future(embed_batch(client, base, docs))
    await asyncio.sleep(0.5)  # the batch is tokenized and running
    speed = await chat_speed(client, base, tokens)
    outlasted = not batch.done()
    batch.cancel()
    try:
        await batch
    except (asyncio.CancelledError, httpx.HTTPError):
        pass
    await asyncio.sleep(1.0)  # the slice running when the client left finishes
    return speed, outlasted


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
    p.add_argument("--batch-alone", action="store_true", help="also time the whole batch alone once")
    p.add_argument("--json")
    args = p.parse_args()
    load_before = os.getloadavg()
    proc, base = start(args)
    try:
        alone, beside, outlasted, batch = asyncio.run(rounds(args, base))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    load_after = os.getloadavg()
    result = {
        "chat_alone_tok_s": statistics.median(alone), "chat_beside_batch_tok_s": statistics.median(beside),
        "longest_gap_alone_s": statistics.median(rounds.gaps[0]),
        "longest_gap_beside_batch_s": statistics.median(rounds.gaps[1]),
        "ratio": statistics.median(beside) / statistics.median(alone),
        "paired_ratios": [round(b / a, 3) for a, b in zip(alone, beside)],
        "batch_alone_s": batch["seconds"], "batch_tokens": batch["tokens"],
        "batch_alone_tok_s": batch["tokens"] / batch["seconds"], "all_outlasted": all(outlasted),
        "share": args.share, "slice_tokens": args.slice_tokens, "docs": args.docs, "doc_tokens": args.doc_tokens,
        "load_before": load_before, "load_after": load_after, "cpu": _cpu(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


async def rounds(args, base: str):
    docs = documents(args.docs, args.doc_tokens)
    async with httpx.AsyncClient() as client:
        await chat_speed(client, base, 8)  # warm-ups
        await embed_batch(client, base, docs[:2])
        batch = await embed_batch(client, base, docs) if args.batch_alone else {"seconds": float("nan"), "tokens": 0}
        alone, beside, outlasted = [], [], []
        gaps_alone, gaps_beside = rounds.gaps = [], []
        for r in range(args.rounds):
            for what in (("alone", "beside") if r % 2 == 0 else ("beside", "alone")):
                if what == "alone":
                    alone.append(await chat_speed(client, base, args.tokens))
                    gaps_alone.append(chat_speed.gaps[-1])
                else:
                    speed, still = await round_with_batch(client, base, docs, args.tokens)
                    beside.append(speed)
                    gaps_beside.append(chat_speed.gaps[-1])
                    outlasted.append(still)
            print(f"round {r}: chat alone {alone[-1]:.1f} tok/s, beside the batch {beside[-1]:.1f} tok/s "
                  f"(batch still running at the end: {outlasted[-1]})", flush=True)
    return alone, beside, outlasted, batch


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
