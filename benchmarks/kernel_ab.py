"""Two (or more) builds or kernel tables side by side: prefill and decode tokens/s, alternating.

    python benchmarks/kernel_ab.py --variant before=/tmp/site-main --variant after=/tmp/site-branch \\
        [--variant avx2=/tmp/site-branch:avx2] [--rounds 5] [--threads 2] [--only smollm2,llama3-8b]
        [--only /work/cache/big/llama3-8b.Q4_K_M.gguf]

A variant is NAME=SITE[:TABLE]: the sysinfer installed in SITE (a `pip install --target` folder), with
SYSINFER_KERNELS=TABLE when given. Each round runs every variant once, in turn (the order rotates
each round), each in a fresh process that loads the model, warms up and times:
  - SmolLM2-135M Q4_0: prefill of 512 tokens, decode of 64 tokens at context 0;
  - Llama-3-8B shape Q4_0 (random weights, generated once into the test cache): prefill of 128
    tokens, decode of 16 tokens at context 0;
  - any other GGUF file named by its path in --only (e.g. a `sysinfer synth` file of another type mix):
    as the Llama-3-8B shape,
through the engine as `sysinfer bench` times them (prefill = prompt / time to first token). The
table gives medians per variant, the ratio to the first variant, and decode against the read
roofline: `_native.read_bandwidth_gbs(1024, threads)` (measured each round, between variants) over
the bytes of weights a decode step reads. The machine's load average is printed each round: on a
shared machine, compare only figures from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# model key -> (prefill tokens, decode tokens)
CASES = {"smollm2": (512, 64), "llama3-8b": (128, 16)}


def child(model_key: str, threads: int) -> None:
    """In the variant's process: one measurement of one model, as a JSON line on stdout."""
    from decode_speed import llama3_8b_file  # noqa: PLC0415
    from support.model_files import smollm2_q4_0  # noqa: PLC0415
    from sysinfer.bench import bench_engine, time_request  # noqa: PLC0415
    from sysinfer.model.native_model import load_model  # noqa: PLC0415
    from sysinfer.model.tokenizer import Tokenizer  # noqa: PLC0415

    path = smollm2_q4_0() if model_key == "smollm2" else llama3_8b_file() if model_key == "llama3-8b" else model_key
    n_pre, n_dec = CASES.get(model_key, CASES["llama3-8b"])
    model = load_model(path, threads=threads, n_ctx=n_pre + n_dec + 32, max_step_tokens=512, max_out_rows=1)
    engine = bench_engine(model, Tokenizer.from_metadata(model.metadata))
    time_request(engine, 16, 4)  # warm-up
    ttft, _ = time_request(engine, n_pre, 1)
    _, decode_s = time_request(engine, 1, n_dec + 1)
    print(json.dumps({"kernels": model.kernels, "prefill": n_pre / ttft, "decode": n_dec / decode_s,
                      "weight_bytes": model.load_stats.weight_bytes}), flush=True)


def run_variant(site: str, table: str | None, model_key: str, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": site}
    env.pop("SYSINFER_KERNELS", None)
    if table:
        env["SYSINFER_KERNELS"] = table
    out = subprocess.run([sys.executable, __file__, "--child", model_key, "--threads", str(threads)],
                         capture_output=True, text=True, env=env, cwd="/tmp", timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"variant at {site} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bandwidth(site: str, threads: int) -> float:
    code = f"from sysinfer import _native; print(_native.read_bandwidth_gbs(1024, {threads}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/tmp",
                         env={**os.environ, "PYTHONPATH": site})
    return float(out.stdout)


def main() -> int:
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        child(sys.argv[i + 1], int(sys.argv[sys.argv.index("--threads") + 1]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", required=True, help="NAME=SITE[:TABLE]")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=",".join(CASES))
    ap.add_argument("--json", help="write every measurement here")
    args = ap.parse_args()
    variants = []
    for v in args.variant:
        name, _, rest = v.partition("=")
        site, _, table = rest.partition(":")
        variants.append((name, site, table or None))
    results: dict = {}
    for key in args.only.split(","):
        if key not in CASES and not Path(key).is_file():
            raise SystemExit(f"--only {key}: neither a case ({', '.join(CASES)}) nor a GGUF file")
        res = results[key] = {name: [] for name, _, _ in variants}
        bw = []
        for r in range(args.rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            load = os.getloadavg()[0]
            for name, site, table in order:
                m = run_variant(site, table, key, args.threads)
                res[name].append(m)
                print(f"[{key} {r + 1}/{args.rounds}, load {load:.1f}] {name} ({m['kernels']}): prefill "
                      f"{m['prefill']:.1f} tok/s, decode {m['decode']:.2f} tok/s", flush=True)
            bw.append(bandwidth(variants[0][1], args.threads))
        res["read_gbs"] = bw
        base = statistics.median(m["prefill"] for m in res[variants[0][0]])
        roofline = statistics.median(bw) * 1e9 / res[variants[0][0]][0]["weight_bytes"]
        print(f"\n{key}: read {statistics.median(bw):.1f} GB/s (median), decode roofline {roofline:.2f} tok/s")
        print("| variant | kernels | prefill tok/s | vs first | decode tok/s | of roofline |")
        print("|---|---|---:|---:|---:|---:|")
        for name, _, _ in variants:
            pre = statistics.median(m["prefill"] for m in res[name])
            dec = statistics.median(m["decode"] for m in res[name])
            print(f"| {name} | {res[name][0]['kernels']} | {pre:.1f} | {pre / base:.2f}x | {dec:.2f} | "
                  f"{dec / roofline:.0%} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
