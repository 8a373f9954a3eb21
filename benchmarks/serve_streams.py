"""Many concurrent streams through the HTTP API: `sysinfer serve` against llama.cpp's `llama-server`
on the same GGUF file (a benchmark, not a test).

    python benchmarks/serve_streams.py [--model FILE.gguf] [--streams 1,8,32] [--tokens 128] [--rounds 3]
                                       [--llama-server PATH/llama-server] [--llama-omp-passive]
                                       [--threads 2] [--json FILE]
    python benchmarks/serve_streams.py --model FILE.gguf --streams 1 --prompt-tokens 2000 --tokens 4 ...

For each stream count N, both servers are started for N streams (sysinfer: `--max-batch N`; llama-server:
`-np N -c N*CTX`, continuous batching being its default), then round by round, alternating which goes
first, each gets N concurrent streaming chat requests from the real `openai` AsyncOpenAI client: the
same N prompts (different questions), temperature 0, `max_tokens` fixed, `ignore_eos` (both servers
accept it), `stream_options.include_usage`. Figures per round: aggregate generated tokens/s = the sum of
the requests' `usage.completion_tokens` over the wall time from the first request sent to the last
stream closed; TTFT = request sent -> first chunk with non-empty content, median and p90 over the
N requests. The table gives medians over the rounds and the ratio of the medians (sysinfer's over
each other server's). For sysinfer it also splits the wall time: the native steps' share (from its
/metrics counters sysinfer_engine_steps_total and sysinfer_native_step_seconds_total, read before and
after each round) and the rest per step, the Python side where it is not overlapped with a step;
then a table of where a step's wall time goes, phase by phase (sysinfer_engine_phase_seconds_total).

Both servers stay up for a stream count; only one is under load at a time. An idle server should
cost nothing (sysinfer's engine loop waits on an event and its native pool sleeps between steps;
llama-server waits for a task), and rather than assume it, the script reads the idle server's CPU
time (/proc/PID/stat) across the other's round and reports it: the "idle CPU" column. Without
--llama-server only sysinfer runs (so CI, which has no llama.cpp, can run a slice).

--prompt-tokens P: time to first token of a long prompt instead of chat questions. Every request is a
streamed /v1/completions request (the same endpoint on both servers, no chat template: random-weight
files have none) whose prompt is P tokens by the model's own tokenizer (prose about a numbered
request, calibrated token by token); each request, warm-ups included, starts with its own number,
so neither server's prefix or prompt cache can reuse an earlier one. TTFT is then the prefill of P
tokens plus one decode step and the HTTP round trip.

--llama-omp-passive adds a third server, llama-server under OMP_WAIT_POLICY=passive (its OpenMP
threads sleep instead of spinning between graph nodes), measured in the same alternation.

--variant NAME=ARGS (repeatable) adds a sysinfer server started with these extra arguments, named
"sysinfer NAME", in the same alternation: e.g. `--variant "cost=--chunk-policy cost"` for prompt
chunks sized by the step-cost model beside the default greedy ones (the ratio column is sysinfer's
over each).

--requests-per-stream M: each of the N streams sends M requests one after another (a closed loop),
request j of stream i with max_tokens between --tokens/2 and --tokens (varied by i and j), so the
streams drift apart and new prompts arrive while the others decode (with --prompt-tokens, each a
long prompt): the steps where a prompt chunk goes beside decoding rows. "stall" is the longest gap
between two content chunks of one request (its decoding held up), median and max over requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import itertools

import httpx
from openai import AsyncOpenAI

from support.model_files import smollm2_q4_0

# Questions that each lead to a long answer; with ignore_eos every request generates max_tokens anyway.
QUESTIONS = [
    "Explain how a refrigerator works.", "Describe the water cycle in detail.", "Tell me a story about a dragon.",
    "Why is the sky blue?", "How do airplanes fly?", "Write a poem about the sea.",
    "Explain photosynthesis step by step.", "What are the causes of the French Revolution?",
    "Describe how to bake bread.", "How does the internet work?", "Explain gravity to a child.",
    "Write a letter to a friend about your holiday.", "What is machine learning?",
    "Describe the life of a honey bee.", "How do volcanoes form?", "Tell me about the history of Rome.",
    "Explain how vaccines work.", "Write a short essay on friendship.", "How does a car engine work?",
    "Describe a walk in the forest.", "What is climate change?", "Explain the rules of chess.",
    "How do computers store data?", "Tell me a story about a lost cat.", "Why do we sleep?",
    "Describe the solar system.", "How is paper made?", "Explain how a bill becomes a law.",
    "Write a recipe for vegetable soup.", "What makes music pleasant?", "How do birds migrate?",
    "Describe your ideal city.",
]


FILLER = ("The operator checked the pumps, wrote the readings into the log, and walked to the next station "
          "along the river before the evening shift began. ")
_request_numbers = itertools.count(1)


class LongPrompts:
    """Prompts of exactly `n_tokens` tokens by the model's tokenizer, each opening with a number never
    used before (so no server's prompt cache can serve it)."""

    def __init__(self, model: str, n_tokens: int):
        from sysinfer.model.model_file import read_model_file
        from sysinfer.model.tokenizer import Tokenizer

        self.tok = Tokenizer.from_metadata(read_model_file(model).metadata)
        self.n_tokens = n_tokens

    def make(self) -> str:
        text = f"Request {next(_request_numbers)}. "
        while len(self.tok.encode(text + FILLER)) <= self.n_tokens:
            text += FILLER
        for word in FILLER.split():  # then word by word up to the count
            if len(self.tok.encode(text + word + " ")) > self.n_tokens:
                break
            text += word + " "
        return text


# ---- the machine ----
def cpu_name() -> str:
    """lscpu's model name with family/model (the model name alone is often just the vendor's)."""
    fields = {}
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or platform.machine()
    flags = fields.get("Flags", "").split()
    isa = ", ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16") if f in flags)
    family, model = fields.get("CPU family", "?"), fields.get("Model", "?")
    return (f"{fields.get('Model name', '?')} (family {family} model {model}), "
            f"{os.cpu_count()} CPUs" + (f"; {isa}" if isa else ""))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the servers ----
@dataclass
class Server:
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    health: str                 # path answering 200 when the model is loaded
    step_metrics: bool = False  # /metrics has sysinfer's step counters
    proc: subprocess.Popen | None = None
    log_path: str = ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> None:
        log = tempfile.NamedTemporaryFile("w+", prefix=f"serve-streams-{self.name}-", suffix=".log", delete=False)
        self.log_path = log.name
        # Not the repository root as cwd: `python -c` would import ./sysinfer instead of the installed build.
        self.proc = subprocess.Popen(self.argv, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=tempfile.gettempdir())
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                if httpx.get(self.base_url + self.health, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready in {timeout:g} s: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_tail(self) -> str:
        try:
            return open(self.log_path).read()[-3000:]
        except OSError:
            return ""


def sysinfer_server(model: str, streams: int, ctx: int, threads: int, name: str = "sysinfer",
                    extra: list[str] | None = None) -> Server:
    port = free_port()
    # --max-batch N: all N streams decode together; --ctx-size: one stream's prompt + reply (the KV cache
    # is sized for N such contexts); prefix cache and the rest at their defaults (speculation is off
    # at max_batch > 1; at N = 1 it is on by default, as a user would run it).
    argv = [sys.executable, "-c", "import sys; from sysinfer.cli import main; sys.exit(main())", "serve", model,
            "--port", str(port), "--threads", str(threads), "--max-batch", str(streams), "--ctx-size", str(ctx),
            "--max-queue", str(max(256, 2 * streams)), "--log-level", "warning"] + (extra or [])
    return Server(name, argv, {}, port, "/health", step_metrics=True)


def llama_server(path: str, model: str, streams: int, ctx: int, threads: int, passive: bool) -> Server:
    port = free_port()
    # -np N slots sharing -c N*ctx (each slot gets ctx); continuous batching is the default.
    argv = [path, "-m", model, "-np", str(streams), "-c", str(streams * ctx), "-t", str(threads),
            "--port", str(port), "--host", "127.0.0.1", "--no-webui"]
    env = {"OMP_WAIT_POLICY": "passive"} if passive else {}
    return Server("llama-server (OMP passive)" if passive else "llama-server", argv, env, port, "/health")


# ---- the load ----
@dataclass
class StreamResult:
    ttft: float            # seconds from sending to the first chunk with content
    seconds: float         # sending to the stream's end
    usage_tokens: int      # usage.completion_tokens of the last chunk (-1: the server sent none)
    chunk_tokens: int      # chunks that carried content (a cross-check: a chunk may hold several tokens)
    prompt_tokens: int = -1  # usage.prompt_tokens (-1: the server sent none)
    cached_tokens: int = -1  # of them, reused from the server's prompt cache (-1: not reported)
    stall: float = 0.0     # the longest gap between two content chunks


async def one_stream(client: AsyncOpenAI, question: str, max_tokens: int, long_prompt: str | None = None
                     ) -> StreamResult:
    """A streamed chat request for `question`, or with `long_prompt` a streamed completion of it."""
    sent = time.perf_counter()
    first = last = None
    stall = 0.0
    usage_tokens, chunk_tokens, prompt_tokens, cached_tokens = -1, 0, -1, -1
    common = dict(model="default", max_tokens=max_tokens, temperature=0, stream=True,
                  stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    if long_prompt is None:
        stream = await client.chat.completions.create(messages=[{"role": "user", "content": question}], **common)
    else:
        stream = await client.completions.create(prompt=long_prompt, **common)
    async for chunk in stream:
        if chunk.usage is not None:
            usage_tokens, prompt_tokens = chunk.usage.completion_tokens, chunk.usage.prompt_tokens
            details = chunk.usage.prompt_tokens_details
            cached_tokens = details.cached_tokens if details is not None and details.cached_tokens is not None else -1
        text = (chunk.choices[0].text if long_prompt is not None else chunk.choices[0].delta.content) \
            if chunk.choices else None
        if text:
            chunk_tokens += 1
            now = time.perf_counter()
            if first is None:
                first = now
            else:
                stall = max(stall, now - last)
            last = now
    end = time.perf_counter()
    return StreamResult((first or end) - sent, end - sent, usage_tokens, chunk_tokens, prompt_tokens, cached_tokens,
                        stall)


@dataclass
class RoundResult:
    tok_s: float
    ttft_median: float
    ttft_p90: float
    tokens: int
    per_stream_tokens: list[int]
    wall: float
    counted_by: str        # "usage" or "chunks"
    prompt_tokens: list[int] = field(default_factory=list)  # per request, by the server's usage
    cached_tokens: list[int] = field(default_factory=list)  # per request, reused from its prompt cache
    steps: int = 0         # sysinfer: engine steps in the round (from /metrics)
    native_seconds: float = 0.0  # sysinfer: their native part (building the inputs and the native call)
    phases: dict[str, float] = field(default_factory=dict)  # sysinfer: seconds in each engine loop phase
    stall_median: float = 0.0  # the requests' longest gaps between content chunks: median
    stall_max: float = 0.0     # and max

    @property
    def python_ms_per_step(self) -> float:
        """The wall time not spent in native steps, per step: the engine's Python side (plan, sampling,
        detokenizing, SSE, the event loop) where it is not overlapped with a step, plus idle time
        (requests arriving, the last streams closing)."""
        return (self.wall - self.native_seconds) / self.steps * 1000 if self.steps else float("nan")


def step_counters(base_url: str) -> dict[str, float]:
    """sysinfer's step counters from /metrics: "steps", "native" (seconds in native steps, building
    their inputs included) and one entry per engine loop phase (sysinfer_engine_phase_seconds_total)."""
    values: dict[str, float] = {}
    for line in httpx.get(base_url + "/metrics", timeout=10).text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == "sysinfer_engine_steps_total":
            values["steps"] = float(value)
        elif name == "sysinfer_native_step_seconds_total":
            values["native"] = float(value)
        elif name.startswith('sysinfer_engine_phase_seconds_total{phase="'):
            values[name.split('"')[1]] = float(value)
    return values


def question(i: int) -> str:
    """Request i's question: all different (past the list, numbered), so no two prompts are equal."""
    q = QUESTIONS[i % len(QUESTIONS)]
    return q if i < len(QUESTIONS) else f"{q} ({i // len(QUESTIONS) + 1})"


def p90(values: list[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]


def request_tokens(max_tokens: int, n: int, i: int, j: int, per_stream: int) -> int:
    """max_tokens of stream i's request j: all --tokens in one-request rounds; in closed loops between
    max_tokens/2 and max_tokens, varied so the streams' requests end at different steps."""
    if per_stream <= 1:
        return max_tokens
    return max_tokens // 2 + (max_tokens // 2) * ((i * 5 + j * 3) % (2 * n + 1)) // (2 * n)


async def load_round(base_url: str, n: int, max_tokens: int, long_prompts: LongPrompts | None = None,
                     per_stream: int = 1) -> RoundResult:
    prompts = [[long_prompts.make() if long_prompts else None for _ in range(per_stream)] for _ in range(n)]

    async def stream(client: AsyncOpenAI, i: int) -> list[StreamResult]:
        return [await one_stream(client, question(i + j * n), request_tokens(max_tokens, n, i, j, per_stream),
                                 prompts[i][j]) for j in range(per_stream)]

    async with AsyncOpenAI(base_url=base_url + "/v1", api_key="none", timeout=1800.0, max_retries=0) as client:
        start = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(stream(client, i) for i in range(n))) for r in rs]
        wall = time.perf_counter() - start
    by_usage = all(r.usage_tokens >= 0 for r in results)
    per_request = [r.usage_tokens if by_usage else r.chunk_tokens for r in results]
    ttfts, stalls = [r.ttft for r in results], [r.stall for r in results]
    return RoundResult(sum(per_request) / wall, statistics.median(ttfts), p90(ttfts), sum(per_request), per_request,
                       wall, "usage" if by_usage else "chunks", [r.prompt_tokens for r in results],
                       [r.cached_tokens for r in results], stall_median=statistics.median(stalls),
                       stall_max=max(stalls))


# ---- the comparison ----
@dataclass
class Row:
    streams: int
    server: str
    rounds: list[RoundResult] = field(default_factory=list)
    idle_cpu_seconds: list[float] = field(default_factory=list)  # this server's CPU while another was loaded

    def median(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.rounds)


def measure(servers: list[Server], n: int, max_tokens: int, rounds: int, warmup_tokens: int,
            long_prompts: LongPrompts | None = None, per_stream: int = 1) -> list[Row]:
    rows = [Row(n, s.name) for s in servers]
    for s in servers:  # warm-up: the first request pays one-off costs (page faults, caches, code paths)
        asyncio.run(load_round(s.base_url, n, warmup_tokens, long_prompts))
    for r in range(rounds):
        order = list(range(len(servers)))
        if r % 2:
            order.reverse()  # alternate who goes first, so drift hits both sides alike
        for i in order:
            others = [(j, cpu_seconds(servers[j].proc.pid)) for j in range(len(servers)) if j != i]
            counters = step_counters(servers[i].base_url) if servers[i].step_metrics else None
            result = asyncio.run(load_round(servers[i].base_url, n, max_tokens, long_prompts, per_stream))
            if counters is not None:
                after = step_counters(servers[i].base_url)
                added = {k: v - counters.get(k, 0.0) for k, v in after.items()}
                result.steps, result.native_seconds = int(added.pop("steps", 0)), added.pop("native", 0.0)
                result.phases = added
            rows[i].rounds.append(result)
            for j, before in others:
                rows[j].idle_cpu_seconds.append(cpu_seconds(servers[j].proc.pid) - before)
            split = (f"; {result.steps} steps, native {result.native_seconds / result.wall:.0%} of wall"
                     if result.steps else "")
            prompt = (f"; prompts of {sorted(set(result.prompt_tokens))} tokens, cached "
                      f"{sorted(set(result.cached_tokens))}" if long_prompts else "")
            print(f"  N={n:<3d} round {r + 1} {servers[i].name:28s} {result.tok_s:8.1f} tok/s  "
                  f"TTFT median {result.ttft_median * 1000:7.0f} ms  stall median/max {result.stall_median * 1000:.0f}/"
                  f"{result.stall_max * 1000:.0f} ms  ({result.tokens} tokens by {result.counted_by} "
                  f"in {result.wall:.2f} s{split}{prompt})", flush=True)
    return rows


def print_table(rows: list[Row], ours_name: str = "sysinfer") -> None:
    print()
    print("| streams | server | aggregate tok/s | per stream tok/s | sysinfer / this | TTFT median ms | TTFT p90 ms "
          "| stall median / max ms | idle CPU s/round | native share of wall | Python ms/step |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        ours = next((b for b in rows if b.streams == row.streams and b.server == ours_name), None)
        ratio = f"{ours.median('tok_s') / row.median('tok_s'):.2f}x" if ours is not None and ours is not row else ""
        idle = f"{statistics.median(row.idle_cpu_seconds):.2f}" if row.idle_cpu_seconds else ""
        split = ""
        if all(r.steps for r in row.rounds):
            share = statistics.median(r.native_seconds / r.wall for r in row.rounds)
            split = f"{share:.0%} | {statistics.median(r.python_ms_per_step for r in row.rounds):.2f}"
        print(f"| {row.streams} | {row.server} | {row.median('tok_s'):.1f} | {row.median('tok_s') / row.streams:.2f} "
              f"| {ratio} | {row.median('ttft_median') * 1000:.0f} | {row.median('ttft_p90') * 1000:.0f} | "
              f"{row.median('stall_median') * 1000:.0f} / {row.median('stall_max') * 1000:.0f} | {idle} | "
              f"{split or ' | '} |")


SPLIT = ("plan", "hand-off", "native", "postprocess", "dispatch", "stream", "between", "outside steps")


def step_split(r: RoundResult) -> dict[str, float]:
    """One round's wall time by engine loop phase, in ms per step. hand-off: the execute phase less the
    native step (thread hand-off, waiting for the GIL); outside steps: the wall time the loop spent in
    no step (requests arriving, waiting for work, the last streams closing)."""
    p = r.phases
    ms = {"plan": p.get("plan", 0.0), "hand-off": p.get("execute", 0.0) - r.native_seconds,
          "native": r.native_seconds, "postprocess": p.get("postprocess", 0.0), "dispatch": p.get("dispatch", 0.0),
          "stream": p.get("stream", 0.0), "between": p.get("between", 0.0)}
    ms["outside steps"] = r.wall - sum(ms.values())
    return {k: v / r.steps * 1000 for k, v in ms.items()}


def print_split(rows: list[Row]) -> None:
    measured = [row for row in rows if row.rounds and all(r.steps and r.phases for r in row.rounds)]
    if not measured:
        return
    print("\nsysinfer's wall time per engine step, ms (medians over the rounds):")
    print("| streams | " + " | ".join(SPLIT) + " | Python on the loop |")
    print("|---:|" + "---:|" * (len(SPLIT) + 1))
    for row in measured:
        splits = [step_split(r) for r in row.rounds]
        med = {k: statistics.median(s[k] for s in splits) for k in SPLIT}
        python = statistics.median(sum(s[k] for k in ("plan", "hand-off", "postprocess", "dispatch", "stream",
                                                         "between")) for s in splits)
        print(f"| {row.streams} | " + " | ".join(f"{med[k]:.2f}" for k in SPLIT) + f" | {python:.2f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="GGUF file (default: SmolLM2-135M-Instruct Q4_0 from the test-model cache)")
    ap.add_argument("--streams", default="1,8,32", help="concurrent stream counts, comma-separated")
    ap.add_argument("--tokens", type=int, default=128, help="max_tokens of every request (ignore_eos: all of them)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=512, help="context per stream (prompt + reply)")
    ap.add_argument("--warmup-tokens", type=int, default=8)
    ap.add_argument("--llama-server", metavar="PATH", help="llama.cpp's llama-server binary (else sysinfer only)")
    ap.add_argument("--llama-omp-passive", action="store_true",
                    help="also run llama-server with OMP_WAIT_POLICY=passive, as a third server")
    ap.add_argument("--prompt-tokens", type=int, default=0,
                    help="long-prompt TTFT: completions of prompts of this many tokens instead of chat questions")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                    help="also a sysinfer server with these extra arguments (e.g. 'greedy=--chunk-policy greedy')")
    ap.add_argument("--requests-per-stream", type=int, default=1,
                    help="closed loop: each stream sends this many requests in turn (max_tokens varied)")
    ap.add_argument("--json", help="write the results as JSON")
    args = ap.parse_args(argv)
    variants = [(name, extra.split()) for name, _, extra in (v.partition("=") for v in args.variant)]
    counts = [int(s) for s in args.streams.split(",")]
    model = args.model or smollm2_q4_0()
    long_prompts = LongPrompts(model, args.prompt_tokens) if args.prompt_tokens > 0 else None
    if long_prompts:  # each stream's context must hold its prompt and reply
        args.ctx = max(args.ctx, args.prompt_tokens + max(args.tokens, args.warmup_tokens) + 64)
    if args.llama_server and not shutil.which(args.llama_server):
        ap.error(f"--llama-server {args.llama_server}: not an executable")

    cpu = cpu_name()
    load_before = os.getloadavg()
    print(f"model {Path(model).name}; CPU {cpu}; {args.threads} threads; max_tokens {args.tokens}; "
          f"{args.rounds} rounds; load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}",
          flush=True)
    rows: list[Row] = []
    for n in counts:
        servers = [sysinfer_server(model, n, args.ctx, args.threads)]
        servers += [sysinfer_server(model, n, args.ctx, args.threads, f"sysinfer {name}", extra)
                    for name, extra in variants]
        if args.llama_server:
            servers.append(llama_server(args.llama_server, model, n, args.ctx, args.threads, passive=False))
            if args.llama_omp_passive:
                servers.append(llama_server(args.llama_server, model, n, args.ctx, args.threads, passive=True))
        try:
            for s in servers:
                s.start()
            rows += measure(servers, n, args.tokens, args.rounds, args.warmup_tokens, long_prompts,
                            args.requests_per_stream)
        finally:
            for s in servers:
                s.stop()
    load_after = os.getloadavg()
    print_table(rows)
    print_split(rows)
    print(f"\nCPU {cpu}; load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")
    short = [(row.server, row.streams) for row in rows for r in row.rounds
             if args.requests_per_stream == 1 and min(r.per_stream_tokens) < args.tokens]
    if short:
        print(f"note: some streams generated fewer than {args.tokens} tokens: {sorted(set(short))}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "cpu": cpu, "model": model, "threads": args.threads, "max_tokens": args.tokens, "rounds": args.rounds,
            "prompt_tokens": args.prompt_tokens, "requests_per_stream": args.requests_per_stream,
            "variants": args.variant,
            "load_average_before": load_before, "load_average_after": load_after,
            "rows": [{**asdict(row), "median_tok_s": row.median("tok_s"),
                      "median_ttft_median": row.median("ttft_median"), "median_ttft_p90": row.median("ttft_p90"),
                      "median_python_ms_per_step": statistics.median(r.python_ms_per_step for r in row.rounds),
                      "split_ms_per_step": [step_split(r) for r in row.rounds if r.steps and r.phases]}
                     for row in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
