"""What a model step of r rows costs against a step of 1 row (issue 28), for one or more builds side by side.

    python benchmarks/rows_cost.py --model FILE.gguf [--variant before=/tmp/site-main --variant after=SITE]
        [--rows 1,2,4,8] [--rounds 7] [--passes 2] [--threads 2] [--context 64]

A variant is NAME=SITE: the sysinfer installed in SITE (a `pip install --target` folder); without
--variant, the installed sysinfer. Variants run in turn, `--passes` times each (alternating, each a fresh
process that loads the model); in a process, each round times one step of every r, the order rotating
each round:
  - decode: r sequences, one token each, at position --context (a batch of r decoding streams);
  - verify: one sequence, r tokens at positions --context.. (a speculative verify of r - 1 drafts),
logits for every row. The rows' tokens differ (a fixed random draw): a mixture of experts routes
equal rows to the same experts, which would hide what r rows read; for such a model the table also
gives the experts a layer's step chose, on average. Figures are medians over all rounds of all
passes, in ms, and each r's ratio to r = 1 of the same variant. Step times are wall times: on a shared
machine compare ratios, taken in one run, and say the load (printed per pass).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np


def child(path: str, rows: list[int], rounds: int, threads: int, context: int) -> None:
    """In the variant's process: {"kernels", "decode": {r: [s...]}, "verify": {r: [s...]}} on stdout."""
    from sysinfer.model.native_model import load_model  # noqa: PLC0415

    r_max = max(rows)
    n_ctx = context + r_max + 16
    model = load_model(path, threads=threads, n_ctx=n_ctx, max_step_tokens=r_max, max_out_rows=r_max,
                       kv_blocks=r_max * (n_ctx // 16 + 1) + 8)
    per_seq = n_ctx // model.block_size + 1
    tables = np.arange(r_max * per_seq, dtype=np.int32).reshape(r_max, per_seq)  # [seq][block]
    tokens = np.random.default_rng(0).integers(3, model.n_vocab, size=r_max)  # [row] token ids, distinct draws

    def decode(r: int) -> None:  # r sequences of one token (their KV before `context` left as it is)
        model.step(tokens[:r], np.full(r, context), np.arange(r + 1), tables[:r], np.full(r, context + 1),
                   np.arange(r))

    def verify(r: int) -> None:  # one sequence, r tokens
        model.step(tokens[:r], np.arange(context, context + r), [0, r], tables[:1], [context + r], np.arange(r))

    moe = model.hparams.n_expert > 0 and hasattr(model.native, "moe_counts")  # (a build without it: no counts)
    out = {"kernels": model.kernels, "decode": {r: [] for r in rows}, "verify": {r: [] for r in rows},
           "experts": {"decode": {}, "verify": {}}}
    for kind, fn in (("decode", decode), ("verify", verify)):
        for r in rows:  # warm-up, and the experts a layer's step of r rows chose (MoE)
            before = model.native.moe_counts if moe else None
            fn(r)
            if before is not None:
                steps, chosen = (a - b for a, b in zip(model.native.moe_counts, before))
                out["experts"][kind][r] = chosen / steps
        for k in range(rounds):
            for r in rows[k % len(rows):] + rows[:k % len(rows)]:
                t0 = time.perf_counter()
                fn(r)
                out[kind][r].append(time.perf_counter() - t0)
    print(json.dumps(out), flush=True)


def main() -> int:
    if "--child" in sys.argv:
        a = json.loads(sys.argv[sys.argv.index("--child") + 1])
        child(a["model"], a["rows"], a["rounds"], a["threads"], a["context"])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--variant", action="append", default=[], help="NAME=SITE")
    ap.add_argument("--rows", default="1,2,4,8")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--context", type=int, default=64)
    args = ap.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    variants = [tuple(v.split("=", 1)) for v in args.variant] or [("installed", "")]
    spec = json.dumps({"model": os.path.abspath(args.model), "rows": rows, "rounds": args.rounds,
                       "threads": args.threads, "context": args.context})
    times = {name: {"decode": {r: [] for r in rows}, "verify": {r: [] for r in rows}} for name, _ in variants}
    kernels, experts = {}, {}
    for p in range(args.passes):
        for name, site in variants:
            env = {**os.environ}
            if site:
                env["PYTHONPATH"] = site
            load = os.getloadavg()[0]
            done = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True, env=env,
                                  cwd="/tmp", timeout=3600)
            if done.returncode != 0:
                raise SystemExit(f"variant {name} failed:\n{done.stderr[-3000:]}")
            res = json.loads(done.stdout.strip().splitlines()[-1])
            kernels[name] = res["kernels"]
            experts[name] = res["experts"]
            for kind in ("decode", "verify"):
                for r in rows:
                    times[name][kind][r] += res[kind][str(r)]
            med = {r: statistics.median(res["decode"][str(r)]) for r in rows}
            print(f"[pass {p + 1}/{args.passes}, load {load:.1f}] {name} ({res['kernels']}): decode "
                  + ", ".join(f"r={r} {med[r] * 1e3:.0f} ms" for r in rows), flush=True)
    print(f"\nmedians over {args.passes} x {args.rounds} rounds; load average now {os.getloadavg()[0]:.1f}")
    print("| variant | step | " + " | ".join(f"r={r}" for r in rows) + " |")
    print("|---|---|" + "---:|" * len(rows))
    for name, _ in variants:
        for kind in ("decode", "verify"):
            med = {r: statistics.median(times[name][kind][r]) for r in rows}
            chose = experts[name][kind]
            cells = [f"{med[r] * 1e3:.0f} ms ({med[r] / med[rows[0]]:.2f}x"
                     + (f", {chose[str(r)]:.1f} experts)" if str(r) in chose else ")") for r in rows]
            print(f"| {name} ({kernels[name]}) | {kind} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
