"""What a JSON-schema constraint costs per generated token (a benchmark, not a test).

    python benchmarks/grammar_overhead.py [--tokens 96] [--repeats 5] [--batch 1] [--model FILE.gguf]

SmolLM2-135M Q4_0 (the test cache's copy; or --model, e.g. the Llama-3-8B-shaped random file that
benchmarks/decode_speed.py --llama3-8b writes, with the real 128k Llama 3 vocabulary), greedy, the same prompt three ways, alternating, repeated:
  free         no constraint;
  overlapped   a JSON schema, each mask computed in the mask thread while the native step runs (as served);
  sequential   the same schema, each mask computed after the step, before sampling (the mask thread off).
The reply is an array of short strings, so every run generates exactly --tokens tokens. Prints the
median milliseconds per token of each way, the difference to free, the median time of one mask
(llguidance alone) and the schema's compile time. With --batch N, N identical requests run together.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from support.model_files import smollm2_q4_0
from sysinfer.engine.llm_engine import LLMEngine
from sysinfer.engine.sampling import SamplingParams
from sysinfer.model.native_model import load_model
from sysinfer.model.tokenizer import Tokenizer
from sysinfer.structured.constraints import compile_constraint, from_request
from sysinfer.structured.grammar_state import GrammarState
from sysinfer.structured.vocabulary import grammar_tokenizer

SCHEMA = {"type": "array", "items": {"type": "string", "maxLength": 24}, "minItems": 200}


def run(engine: LLMEngine, prompt: list[int], tokens: int, batch: int, grammar) -> float:
    """Seconds per decoded token (after the first token) of `batch` requests generated together."""
    # ignore_eos: a free reply that ended early would leave a smaller batch, and cheaper steps
    seqs = [engine.add_request(prompt, SamplingParams(max_tokens=tokens, grammar=grammar, ignore_eos=True))
            for _ in range(batch)]
    while any(not s.output_ids for s in seqs):  # prefill and the first token: not what we measure
        engine.step()
    start, first = time.perf_counter(), sum(len(s.output_ids) for s in seqs)
    while any(not s.finished for s in seqs):
        engine.step()
    generated = sum(len(s.output_ids) for s in seqs) - first
    return (time.perf_counter() - start) / generated * batch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    model = load_model(args.model or smollm2_q4_0(), threads=args.threads, n_ctx=1024, kv_blocks=256, max_step_tokens=512,
                       max_out_rows=args.batch)
    tok = Tokenizer.from_metadata(model.metadata)
    grammar_tokenizer(tok)  # the vocabulary trie, built once per server
    constraint = from_request(guided_json=SCHEMA)
    compiles = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        matcher = compile_constraint(tok, constraint)
        compiles.append(time.perf_counter() - start)
    prompt = tok.apply_chat_template([{"role": "user", "content": "List some fruits and vegetables as JSON."}])
    engine = LLMEngine(model, tok, max_batch=args.batch, enable_prefix_cache=False)
    sequential = LLMEngine(model, tok, max_batch=args.batch, enable_prefix_cache=False)
    sequential._masks_ahead = lambda plan: None  # masks computed in sample(), after the step
    ways = {"free": (engine, None), "overlapped": (engine, matcher), "sequential": (sequential, matcher)}
    times: dict[str, list[float]] = {w: [] for w in ways}
    for _ in range(args.repeats):  # alternating, so the machine's load falls on every way alike
        for way, (eng, grammar) in ways.items():
            times[way].append(run(eng, prompt, args.tokens, args.batch, grammar))
    masks = []
    state = GrammarState(matcher, tok.vocab_size)
    for t in tok.encode('["apple", "pear", "carrot", "leek", "plum", "fig", "kale"'):
        start = time.perf_counter()
        state.compute_masks()
        masks.append(time.perf_counter() - start)
        state.consume(t)
    free = statistics.median(times["free"])
    name = Path(args.model).name if args.model else "SmolLM2-135M Q4_0"
    print(f"{name} (vocabulary {tok.vocab_size}), batch {args.batch}, {args.tokens} tokens, {args.threads} threads, "
          f"medians of {args.repeats}")
    for way, ts in times.items():
        ms = statistics.median(ts) * 1000
        print(f"  {way:<11} {ms:7.2f} ms/token  ({(statistics.median(ts) / free - 1) * 100:+5.1f} % vs free)")
    print(f"  one mask (llguidance alone): median {statistics.median(masks) * 1e6:.0f} us, "
          f"max {max(masks) * 1e6:.0f} us over {len(masks)} tokens")
    print(f"  schema compile: median {statistics.median(compiles) * 1000:.2f} ms")


if __name__ == "__main__":
    main()
