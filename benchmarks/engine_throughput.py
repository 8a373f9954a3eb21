"""Aggregate decode tokens/s of the engine at several --max-batch values, and the Python time spent
around each native step (a benchmark, not a test).

    python benchmarks/engine_throughput.py [--model FILE.gguf] [--batches 1,4,8,16] [--tokens 64] [--threads 2]

Each run starts max_batch concurrent greedy chat requests (different questions) of --tokens new
tokens each; figures are medians over --repeats runs. Default model: SmolLM2-135M Q4_0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import anyio

from support.model_files import smollm2_q4_0
from sysinfer.engine.async_engine import AsyncEngine
from sysinfer.engine.sampling import SamplingParams
from sysinfer.model.native_model import load_model
from sysinfer.model.tokenizer import Tokenizer

QUESTIONS = ["What is the capital of France?", "Name a primary color.", "What is 2+2?", "Say hello in French.",
             "What is water made of?", "Who wrote Hamlet?", "What is the largest planet?", "Count to five."]


async def run_once(engine: AsyncEngine, prompts: list[list[int]], n: int) -> tuple[float, int]:
    generated = 0

    async def one(p):
        nonlocal generated
        async for delta in engine.generate(p, SamplingParams(max_tokens=n, ignore_eos=True)):
            generated += len(delta.token_ids)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(engine.run)
        async with anyio.create_task_group() as clients:
            for p in prompts:
                clients.start_soon(one, p)
        await engine.shutdown()
    return time.perf_counter() - start, generated


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--batches", default="1,4,8,16")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    model = load_model(args.model or smollm2_q4_0(), threads=args.threads, n_ctx=2048, kv_blocks=1024,
                       max_out_rows=max(batches))
    tok = Tokenizer.from_metadata(model.metadata)
    print(f"model {Path(model.path).name}, kernels {model.kernels}, threads {model.n_threads}")
    print("max_batch  requests  decode tok/s (aggregate)  (wall - native step) / native step time")
    for b in batches:
        rates, overheads = [], []
        for _ in range(args.repeats):
            engine = AsyncEngine(model, tok, max_batch=b, enable_prefix_cache=False)
            prompts = [tok.apply_chat_template([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}])
                       for i in range(b)]
            seconds, generated = anyio.run(run_once, engine, prompts, args.tokens)
            rates.append(generated / seconds)
            stats = engine.snapshot()
            overheads.append((seconds - stats.step_seconds_total) / stats.step_seconds_total)
        print(f"{b:9d}  {b:8d}  {statistics.median(rates):24.1f}  {statistics.median(overheads):8.1%}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
