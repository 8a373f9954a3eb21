"""`sysinfer bench`: the reference deployment's table, tokens/s against total length L.

For each L: a prompt of L/2 tokens, then L/2 greedy tokens, one request through the engine (the same
step() that serves requests: scheduler, model runner, sampler, detokenizer).
Reported per L: prefill tok/s, decode tok/s, average tok/s (L / (prefill + decode time), the
"input + output length" figure of the reference table), time to first token, peak RSS, and the
fraction of the decode roofline reached. The roofline is read bandwidth / bytes of weights read per
token, with bandwidth from a short read probe over a 1 GiB buffer, larger than the caches (native,
one thread per pool thread, each reading four interleaved streams as the decode GEMV does).
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import asdict, dataclass

import numpy as np

from . import _native
from .config import EngineConfig
from .engine.llm_engine import LLMEngine
from .engine.sampling import SamplingParams
from .model.native_model import LoadedModel


@dataclass
class BenchRow:
    length: int
    prompt_tokens: int
    generated_tokens: int
    prefill_tok_s: float
    decode_tok_s: float
    average_tok_s: float
    ttft_s: float
    peak_rss_mib: float
    roofline_fraction: float | None


def read_bandwidth_gbs(threads: int, *, mib: int = 1024, repeats: int = 3) -> float:
    """GB/s of reading a buffer larger than the caches with `threads` threads (native probe: each
    thread reads its share as four interleaved streams, one load per cache line, once plain and once
    with the decode GEMV's software prefetch; the faster walk counts). `mib` and `repeats`
    are keywords: the native probe takes (mib, threads), and `read_bandwidth_gbs(1024, 2)` here once
    meant 1,024 threads over 2 MiB (0.1 GB/s) to someone who read it the native way round."""
    return _native.read_bandwidth_gbs(mib, threads, repeats)


def bench_engine(model: LoadedModel, tokenizer) -> LLMEngine:
    """A single-sequence engine for timing, as `sysinfer serve` runs by default, but without the prefix
    cache (prompts of different lengths share a random start, which must be computed every time)."""
    return LLMEngine(model, tokenizer, EngineConfig(max_batch=1, enable_prefix_cache=False))


def time_request(engine: LLMEngine, prompt_n: int, gen_n: int, seed: int = 0) -> tuple[float, float]:
    """(seconds to the first token, seconds for the other gen_n - 1 tokens) of a random prompt of
    prompt_n tokens, greedy, never stopping early."""
    rng = np.random.default_rng(seed)
    prompt = rng.integers(3, engine.model.n_vocab, size=prompt_n).tolist()
    start = time.perf_counter()
    first = None
    for delta in engine.generate(prompt, SamplingParams(max_tokens=gen_n, ignore_eos=True)):
        if first is None:
            first = time.perf_counter()
    return first - start, time.perf_counter() - first


def run_length(engine: LLMEngine, length: int, seed: int = 0) -> BenchRow:
    prompt_n, gen_n = max(1, length // 2), max(1, length - length // 2)
    prefill_s, decode_s = time_request(engine, prompt_n, gen_n, seed)
    total = prefill_s + decode_s
    decode_rate = (gen_n - 1) / decode_s if gen_n > 1 and decode_s > 0 else float("nan")
    return BenchRow(length, prompt_n, gen_n, prompt_n / prefill_s, decode_rate, length / total, prefill_s,
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, None)


def run_bench(model: LoadedModel, tokenizer, lengths: list[int], progress=None) -> tuple[list[BenchRow], float]:
    engine = bench_engine(model, tokenizer)
    rows = []
    run_length(engine, 16)  # warm-up
    for L in lengths:
        rows.append(run_length(engine, L))
        if progress:
            progress(rows[-1])
    # The probe runs last so its buffer doesn't count in the rows' peak RSS.
    bandwidth = read_bandwidth_gbs(model.n_threads)
    roofline = bandwidth * 1e9 / model.load_stats.weight_bytes  # tokens/s if every weight is read once per token
    for row in rows:
        row.roofline_fraction = row.decode_tok_s / roofline if np.isfinite(row.decode_tok_s) else None
    return rows, bandwidth


def format_table(rows: list[BenchRow]) -> str:
    head = f"{'L':>6} {'prefill tok/s':>14} {'decode tok/s':>13} {'avg tok/s':>10} {'TTFT s':>8} {'peak RSS MiB':>13} {'roofline':>9}"
    lines = [head]
    for r in rows:
        frac = f"{r.roofline_fraction:.0%}" if r.roofline_fraction is not None else "-"
        lines.append(f"{r.length:>6} {r.prefill_tok_s:>14.1f} {r.decode_tok_s:>13.2f} {r.average_tok_s:>10.2f} "
                     f"{r.ttft_s:>8.3f} {r.peak_rss_mib:>13.0f} {frac:>9}")
    return "\n".join(lines)


def write_outputs(rows: list[BenchRow], bandwidth: float, model: LoadedModel, json_path: str | None,
                  plot_path: str | None) -> None:
    roofline = bandwidth * 1e9 / model.load_stats.weight_bytes
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"model": model.path, "kernels": model.kernels, "threads": model.n_threads,
                       "read_bandwidth_gbs": bandwidth, "decode_roofline_tok_s": roofline,
                       "rows": [asdict(r) for r in rows]}, f, indent=2)
    if plot_path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        lengths = [r.length for r in rows]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(lengths, [r.average_tok_s for r in rows], "o-", label="average tok/s (L / total time)")
        ax.plot(lengths, [r.decode_tok_s for r in rows], "s--", label="decode tok/s")
        ax.axhline(roofline, color="grey", linestyle=":", label=f"decode roofline ({bandwidth:.1f} GB/s read)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("input + output tokens (L)")
        ax.set_ylabel("tokens/s")
        ax.set_title(f"{model.path.rsplit('/', 1)[-1]} - {model.kernels}, {model.n_threads} threads")
        ax.legend()
        fig.tight_layout()
        fig.savefig(plot_path, dpi=120)
        plt.close(fig)
