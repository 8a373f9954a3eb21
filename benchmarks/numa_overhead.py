"""Cost of the tensor-parallel split on one node: the same model loaded as one node (--numa off) and as
N forced virtual nodes (SYSINFER_NUMA_NODES=N), timed alternately through the engine (sysinfer.bench:
a prompt of L/2 tokens, L/2 greedy tokens), medians of prefill and decode tok/s.

    python benchmarks/numa_overhead.py [MODEL.gguf] --nodes 2 --length 512 --rounds 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from sysinfer.bench import bench_engine, run_length
from sysinfer.model.native_model import load_model
from sysinfer.model.tokenizer import Tokenizer


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("model", nargs="?")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--threads", type=int)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    path = args.model
    if path is None:
        from support.model_files import smollm2_q4_0

        path = smollm2_q4_0()
    kw = dict(threads=args.threads, n_ctx=args.length + 16, max_step_tokens=512)
    os.environ.pop("SYSINFER_NUMA_NODES", None)
    one = load_model(path, numa="off", **kw)
    os.environ["SYSINFER_NUMA_NODES"] = str(args.nodes)
    split = load_model(path, numa="tp", **kw)
    tok = Tokenizer.from_metadata(one.metadata)
    engines = {"1 node": bench_engine(one, tok), f"{args.nodes} nodes": bench_engine(split, tok)}
    for e in engines.values():
        run_length(e, 32)  # warm-up
    rows = {k: [] for k in engines}
    for r in range(args.rounds):
        for name, e in (engines.items() if r % 2 == 0 else reversed(engines.items())):
            rows[name].append(run_length(e, args.length, seed=r))
    print(f"model {path}  threads {one.n_threads}  L={args.length} ({args.length // 2} in, {args.length // 2} out)  "
          f"rounds {args.rounds}, alternating")
    base = None
    for name, rs in rows.items():
        pre = statistics.median(x.prefill_tok_s for x in rs)
        dec = statistics.median(x.decode_tok_s for x in rs)
        base = base or (pre, dec)
        print(f"{name:>8}: prefill {pre:8.1f} tok/s ({pre / base[0]:.3f})  decode {dec:7.1f} tok/s ({dec / base[1]:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
