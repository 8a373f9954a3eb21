"""Greedy tokens of sysinfer against llama.cpp's llama-server on the same GGUF files (issue 23).

    python scripts/greedy_vs_llamacpp.py --llama-server PATH/llama-server
        [--files Q4_K_M=smol-Q4_K_M.gguf,...]  (default: the shipped Q4_1 and every llama-quantize copy
                                                 of SmolLM2 found by tests/support/model_files.py)
        [--tokens 32] [--prompts N] [--threshold 0.05] [--json FILE]

For each file and prompt (SmolLM2's chat form), both engines continue the prompt greedily: sysinfer's
native step in this process (argmax of the logits), llama-server's /completion with the prompt given
as token ids, temperature 0, top_k 1, up to its end-of-sequence token (llama-server's ignore_eos
would forbid that token, so the two would differ wherever sysinfer ends the reply). Where the two first differ, the float
reference (tests/support/reference_forward.py, float32 activations over the file's dequantized
weights, no activation rounding) arbitrates: the two picks' reference logits differ by `gap` standard
deviations of that position's logits. Both engines round activations (llama.cpp to Q8_K / Q8_0 / Q8_1
by type, sysinfer to its own forms), so when gap < --threshold (0.05 std, the project's near-tie
bound, tests/native/test_forward.py) the divergence is a near-tie that rounding may decide either way;
otherwise the reference says which engine picked nearer its top token: sysinfer's pick within
the top threshold of the reference's top (`ours_short`) is fine, one further below is a clear
divergence, a bug to find. The top threshold is --top-threshold if given, else 3x sysinfer's own
error on the file, measured (`noise`: the relative RMS of its logits against the reference over
every position of the first prompt), at least 0.1 std: the rounding a file's activation forms cost
differs (per 32 values for most types; one scale per 256 for Q4_K / Q5_K / Q6_K, as llama.cpp's Q8_K),
and a pick that lies within it of the top is rounding, not a bug. (Measured on SmolLM2's chat prompt:
the shipped Q4_1 file's error 0.038 puts its bound at 0.115, near the fixed 0.1 this script used
before; llama-quantize's Q5_K_M copy's 0.085 at 0.255, the loosest; docs/benchmarks.md has the table.) (Both engines round activations to 8 bits, in forms and
orders of their own, so two picks can lie further apart than either lies from the reference.) After a divergence both continue from the
common prefix plus llama.cpp's token, so one near-tie does not end the comparison: the table counts
every token compared, the divergences, and how many were near-ties.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from support.model_files import LLAMA_QUANTIZED_TYPES, llama_quantized_smollm2, smollm2_chat_ids, smollm2_q4_1
from support.reference_forward import ReferenceModel
from sysinfer.model.native_model import load_model

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
    "List the first five prime numbers.",
    "Give me a tip for learning to cook.",
]


@dataclass
class Divergence:
    prompt: int       # index into PROMPTS
    at: int           # generated tokens before it
    ours: int
    theirs: int
    gap: float        # |ref[ours] - ref[theirs]| / std(ref) at that position
    ours_short: float    # (max(ref) - ref[ours]) / std(ref): how far below the reference's top
    theirs_short: float  # the same for llama.cpp's pick
    near_tie: bool       # gap < threshold: rounding may decide it either way
    ok: bool             # near_tie, or sysinfer's pick within threshold of the reference's top


@dataclass
class FileResult:
    name: str
    path: str
    compared: int = 0  # tokens compared over all prompts
    noise: float = 0.0  # sysinfer's relative RMS logit error against the reference (first prompt)
    top_threshold: float = 0.0  # the bound on ours_short this file was judged by
    divergences: list[Divergence] = field(default_factory=list)

    @property
    def clear(self) -> int:  # divergences where sysinfer's pick is clearly below the reference's top
        return sum(not d.ok for d in self.divergences)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """llama-server on one file, one slot, for the length of a `with` block."""

    def __init__(self, binary: str, model: str, threads: int):
        self.port = free_port()
        argv = [binary, "-m", model, "-np", "1", "-c", "1024", "-t", str(threads), "--port", str(self.port),
                "--host", "127.0.0.1", "--no-webui"]
        env = dict(os.environ, OMP_WAIT_POLICY="passive")  # shared machine: don't spin
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)

    def __enter__(self):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with status {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError("llama-server did not become ready in 120 s")

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def greedy(self, prompt: list[int], n: int) -> list[int]:
        body = {"prompt": prompt, "n_predict": n, "temperature": 0.0, "top_k": 1,
                "cache_prompt": False, "return_tokens": True, "samplers": ["top_k"]}
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/completion", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as r:
            reply = json.load(r)
        if reply.get("tokens_evaluated", len(prompt)) != len(prompt):  # e.g. a BOS added: not the same input
            raise RuntimeError(f"llama-server evaluated {reply['tokens_evaluated']} prompt tokens, sent {len(prompt)}")
        return [int(t) for t in reply["tokens"]]


def native_greedy(model, prompt: list[int], n: int) -> list[int]:
    """Prefill, then one decode step per token through the paged cache (as tests/native/test_forward.py)."""
    tokens = list(prompt)
    table = np.arange(-(-(len(prompt) + n) // model.block_size), dtype=np.int32)[None, :]
    logits = model.step(tokens, np.arange(len(tokens)), [0, len(tokens)], table, [len(tokens)], [len(tokens) - 1])
    out = []
    for _ in range(n):
        nxt = int(np.argmax(logits[0]))
        out.append(nxt)
        tokens.append(nxt)
        pos = len(tokens) - 1
        logits = model.step([nxt], [pos], [0, 1], table, [pos + 1], [0])
    return out


def own_error(model, ref, prompt: list[int]) -> float:
    """Relative RMS error of sysinfer's logits at every position of prompt against the reference's."""
    n = len(prompt)
    table = np.arange(-(-n // model.block_size), dtype=np.int32)[None, :]
    ours = model.step(prompt, np.arange(n), [0, n], table, [n], np.arange(n)).copy()
    theirs = ref.forward(prompt)
    return float(np.sqrt(np.mean((ours - theirs) ** 2)) / theirs.std())


def compare_file(name: str, path: str, server: str, prompts: list[str], n: int, threshold: float,
                 top_threshold: float | None, threads: int) -> FileResult:
    res = FileResult(name, path)
    model = load_model(path, threads=threads, n_ctx=1024, kv_blocks=64)
    ref = ReferenceModel(path, quantize_activations=False, fp16_kv=False)
    res.noise = own_error(model, ref, smollm2_chat_ids(prompts[0]))
    res.top_threshold = top_threshold if top_threshold is not None else max(0.1, 3 * res.noise)
    top_threshold = res.top_threshold
    with LlamaServer(server, path, threads) as llama:
        for p, text in enumerate(prompts):
            prompt, done = smollm2_chat_ids(text), 0
            while done < n:
                theirs = llama.greedy(prompt, n - done)  # shorter when it ended with end-of-sequence
                ours = native_greedy(model, prompt, len(theirs))
                at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
                if at is None:
                    res.compared += len(theirs)
                    break
                logits = ref.forward(prompt + theirs[:at])[-1]
                std, top = float(logits.std()), float(logits.max())
                gap = abs(float(logits[ours[at]] - logits[theirs[at]])) / std
                ours_short, theirs_short = (top - float(logits[ours[at]])) / std, (top - float(logits[theirs[at]])) / std
                res.divergences.append(Divergence(p, done + at, ours[at], theirs[at], gap, ours_short, theirs_short,
                                                  gap < threshold, gap < threshold or ours_short < top_threshold))
                res.compared += at + 1
                prompt, done = prompt + theirs[:at + 1], done + at + 1  # resume from llama.cpp's pick
    return res


def default_files() -> dict[str, str]:
    files = {"Q4_1 (shipped)": smollm2_q4_1()}
    for kind in LLAMA_QUANTIZED_TYPES:
        path = llama_quantized_smollm2(kind)
        if path is not None:
            files[kind] = path
    return files


def table(results: list[FileResult], n_prompts: int) -> str:
    rows = ["| file | prompts | tokens compared | divergences | near-ties | sysinfer nearer the reference's top | "
            "llama.cpp nearer | clear (sysinfer off) | largest sysinfer shortfall (std) | sysinfer's error | bound |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        ties = [d for d in r.divergences if d.near_tie]
        rest = [d for d in r.divergences if not d.near_tie]
        ours_nearer = sum(d.ours_short < d.theirs_short for d in rest)
        worst = max((d.ours_short for d in r.divergences), default=0.0)
        rows.append(f"| {r.name} | {n_prompts} | {r.compared} | {len(r.divergences)} | {len(ties)} | {ours_nearer} | "
                    f"{len(rest) - ours_nearer} | {r.clear} | {worst:.3f} | {r.noise:.3f} | {r.top_threshold:.3f} |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-server", required=True, metavar="PATH")
    ap.add_argument("--files", help="NAME=PATH,... (default: shipped Q4_1 + the llama-quantize copies found)")
    ap.add_argument("--tokens", type=int, default=32, help="greedy tokens per prompt")
    ap.add_argument("--prompts", type=int, default=len(PROMPTS), help=f"how many of the {len(PROMPTS)} prompts")
    ap.add_argument("--threshold", type=float, default=0.05, help="near-tie bound between the two picks, in std")
    ap.add_argument("--top-threshold", type=float, default=None,
                    help="how far below the reference's top sysinfer's pick may lie, in std "
                         "(default: 3x sysinfer's measured error on the file, at least 0.1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    if not os.access(args.llama_server, os.X_OK):
        ap.error(f"--llama-server {args.llama_server}: not an executable")
    files = dict(kv.split("=", 1) for kv in args.files.split(",")) if args.files else default_files()
    prompts = PROMPTS[:args.prompts]
    results = []
    for name, path in files.items():
        r = compare_file(name, path, args.llama_server, prompts, args.tokens, args.threshold, args.top_threshold,
                         args.threads)
        for d in r.divergences:
            verdict = "near-tie" if d.near_tie else "sysinfer at the top" if d.ok else "CLEAR"
            print(f"  {name}: prompt {d.prompt} token {d.at}: ours {d.ours} llama.cpp {d.theirs}, gap {d.gap:.4f} std, "
                  f"below the reference's top: ours {d.ours_short:.4f}, llama.cpp {d.theirs_short:.4f} -> {verdict}",
                  flush=True)
        results.append(r)
    print(table(results, len(prompts)))
    if args.json:
        Path(args.json).write_text(json.dumps(
            [dict(asdict(r), clear=r.clear) for r in results], indent=1))
    return 1 if any(r.clear for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
