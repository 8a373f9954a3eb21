"""Decode and prefill tokens/s of the native step, single sequence (a benchmark, not a test).

    python benchmarks/decode_speed.py [--threads 2] [--model FILE.gguf ...] [--llama3-8b] [--repeats 3]
                                      [--context 0,1000,4000] [--prompt 128] [--decode 64]

With no --model it measures SmolLM2-135M-Instruct Q4_0 (made from the bundled Q4_1 file) and, with
--llama3-8b, a random-weight file with Llama-3-8B's exact shapes (Q4_0, Q6_K output), generated
into the test cache. Decode at context C: C + --prompt tokens are in the KV cache before the timed
tokens. Prints medians over --repeats runs, one line per model and context (the model is loaded
once, its KV cache sized for the longest context).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path


from support.model_files import cache_dir, smollm2_q4_0
from sysinfer.bench import bench_engine, time_request
from sysinfer.model.native_model import load_model
from sysinfer.model.tokenizer import Tokenizer
from sysinfer.model.synth_presets import synth_like


def llama3_8b_file() -> str:
    path = cache_dir() / "llama3-8b-shape.Q4_0.gguf"
    if not path.exists():
        print("writing a Llama-3-8B-shaped random Q4_0 file (once) ...", flush=True)
        synth_like("llama3-8b", str(path.with_suffix(".tmp")))
        path.with_suffix(".tmp").rename(path)
    return str(path)


def measure(engine, prompt_len: int, decode_tokens: int, context: int = 0) -> tuple[float, float]:
    """(prefill tokens/s of a prompt_len prompt, decode tokens/s after context + prompt_len tokens),
    one request at a time through the engine, as `sysinfer bench` times them."""
    ttft, _ = time_request(engine, prompt_len, 1)
    _, decode_s = time_request(engine, context + prompt_len, decode_tokens + 1)
    return prompt_len / ttft, decode_tokens / decode_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", help="GGUF file(s) to measure")
    ap.add_argument("--llama3-8b", action="store_true", help="also measure the Llama-3-8B shape")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--context", default="0", help="tokens already in the cache before decoding (a comma list)")
    args = ap.parse_args()
    models = args.model or [smollm2_q4_0()]
    if args.llama3_8b:
        models.append(llama3_8b_file())
    contexts = [int(c) for c in args.context.split(",")]
    for path in models:
        # the longest request: context + prompt + decode + 1 tokens (its first token comes with prefill)
        ctx = max(contexts) + args.prompt + args.decode + 1
        model = load_model(path, threads=args.threads, n_ctx=ctx, max_step_tokens=512)
        decode_n = args.decode if model.n_params < 1e9 else max(8, args.decode // 8)
        engine = bench_engine(model, Tokenizer.from_metadata(model.metadata))
        measure(engine, 16, 4, 0)  # warm-up
        for context in contexts:
            runs = [measure(engine, args.prompt, decode_n, context) for _ in range(args.repeats)]
            pre = statistics.median(r[0] for r in runs)
            dec = statistics.median(r[1] for r in runs)
            print(f"{Path(path).name}: kernels={model.kernels} threads={model.n_threads} "
                  f"prefill({args.prompt})={pre:.1f} tok/s decode(ctx {context})={dec:.2f} tok/s "
                  f"[runs: {', '.join(f'{r[1]:.2f}' for r in runs)}]", flush=True)
        del model, engine
    return 0


if __name__ == "__main__":
    sys.exit(main())
