"""What logprobs cost per generated token (a benchmark, not a test).

    python benchmarks/logprobs_cost.py [--model FILE.gguf] [--tokens 128] [--rounds 5] [--threads 2]

1. The numpy work alone (engine/logprobs.py token_logprob) on one logits row of SmolLM2's vocabulary
   (49,152) and Llama 3's (128,256), for top_logprobs 0, 5 and 20, beside the sampler's own work on the
   same row (greedy, and temperature 0.8 with top_p 0.95); medians of 200 calls each.
2. Greedy decode through the engine (SmolLM2 Q4_0 by default), logprobs off against top_logprobs 20,
   alternating off/on for --rounds rounds; the median tok/s of each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from support.model_files import smollm2_q4_0
from sysinfer.engine.llm_engine import LLMEngine
from sysinfer.engine.logprobs import token_logprob
from sysinfer.engine.sampling import Sampler, SamplingParams
from sysinfer.model.native_model import load_model
from sysinfer.model.tokenizer import Tokenizer
from sysinfer.model.gguf_header import read_gguf_header


def median_us(fn, calls: int = 200) -> float:
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def numpy_costs() -> None:
    print("per-token numpy cost, median of 200 calls (us)")
    print(f"{'vocab':>8} {'greedy':>8} {'T0.8/p.95':>10} {'lp k=0':>8} {'lp k=5':>8} {'lp k=20':>8}")
    rng = np.random.default_rng(0)
    for vocab in (49152, 128256):
        row = (rng.standard_normal(vocab) * 3).astype(np.float32)
        greedy, sampled = Sampler(SamplingParams()), Sampler(SamplingParams(temperature=0.8, top_p=0.95, seed=1))
        cols = [median_us(lambda: greedy.sample(row, [])), median_us(lambda: sampled.sample(row, []))]
        cols += [median_us(lambda k=k: token_logprob(row, 7, k)) for k in (0, 5, 20)]
        print(f"{vocab:>8} " + " ".join(f"{c:>8.0f}" if i != 1 else f"{c:>10.0f}" for i, c in enumerate(cols)))


def decode_tok_s(engine: LLMEngine, prompt: list[int], tokens: int, logprobs: int | None) -> float:
    start = time.perf_counter()
    n = sum(len(d.token_ids) for d in engine.generate(prompt, SamplingParams(max_tokens=tokens, ignore_eos=True,
                                                                             logprobs=logprobs)))
    return n / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    numpy_costs()
    path = args.model or smollm2_q4_0()
    model = load_model(path, threads=args.threads, n_ctx=1024, kv_blocks=256)
    tok = Tokenizer.from_metadata(read_gguf_header(path))
    engine = LLMEngine(model, tok, enable_prefix_cache=False)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Tell me about the sea."}])
    decode_tok_s(engine, prompt, 16, None)  # warm up
    off, on = [], []
    for _ in range(args.rounds):
        off.append(decode_tok_s(engine, prompt, args.tokens, None))
        on.append(decode_tok_s(engine, prompt, args.tokens, 20))
    print(f"engine decode, {args.tokens} tokens, {args.rounds} rounds alternating ({Path(path).name}, "
          f"{model.n_threads} threads, {model.kernels}):")
    print(f"  logprobs off:           median {statistics.median(off):6.1f} tok/s  {[round(x, 1) for x in off]}")
    print(f"  top_logprobs 20:        median {statistics.median(on):6.1f} tok/s  {[round(x, 1) for x in on]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
