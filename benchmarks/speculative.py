"""Single-stream decode speed with and without speculation (a benchmark, not a test).

    python benchmarks/speculative.py [--rounds 3] [--max-tokens 200] [--threads 2] [--json F]
                                     [--draft-model FILE.gguf | --draft-model smollm2] [--model-only]
    python benchmarks/speculative.py --server [--model FILE.gguf] [--modes on,off,always] [--sets ...]
                                     [--prompts N] [--rounds 3] [--max-tokens 64] [--threads 2] [--json F]
                                     [--llama-server PATH/llama-server]

--server: through the HTTP API, one stream at a time, one server per mode started side by side on
the same file: "on" is the default (speculation on at --max-batch 1, drafting where the cost policy
finds it pays: engine/spec_policy.py), "off" is --no-speculative, "always" verifies every draft found
(the policy before issue 28). Each round sends every prompt of a set to every mode, the order of the
modes rotating by round; decode tok/s = (completion tokens - 1) / (time from the first streamed
token to the last); medians over rounds, ratios against "off"; greedy texts must agree. The CPU and
the load average (start and end of each set) are printed with the figures. --llama-server adds the
mode "llama": llama.cpp's llama-server on the same file (one slot, -c 2048, the same threads), in the
same rotation, asked for the same replies with `ignore_eos` (its text is not required to agree:
another engine's arithmetic), and the ratio of each sysinfer mode to it.

Without --draft-model, "on" drafts by prompt lookup; with it, "on" drafts as the server does with
--draft-model: prompt lookup first, that model where lookup finds nothing (--model-only: the model
every step). The model needs SmolLM2's vocabulary; `smollm2` = SmolLM2 Q4_0 itself, the sanity check:
the model's drafts are all accepted, and since it costs as much as the target the speed-up of
--model-only is below 1.

SmolLM2-135M-Instruct Q4_0, greedy, one request at a time through the engine (as the server runs it
at max_batch 1). Sets (tests/support/spec_prompts.py): extractive (a question about a ~1,000-token
document, quote-and-summarise it, edit a given code file), open chat, Chinese, a prompt with
nothing to quote, and constrained (structured output about the same document: a JSON schema and a
regex; drafts are cut where the grammar forbids a token, and its forced tokens are drafted). Each round runs every prompt without and with speculation, the order alternating
round by round; the figures are medians over rounds. Decode tok/s counts the tokens after the first
over the time after the first (the prompt's prefill is the same either way). Every pair of outputs
must be token for token identical; the script fails otherwise.

Per set: tok/s off and on, their ratio, acceptance (accepted / drafted), mean accepted length
(accepted drafts per step that verified drafts) and tokens per decode step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from support.model_files import smollm2_q4_0
from support.spec_prompts import CHINESE, CONSTRAINED, EXTRACTIVE, NO_MATCH, OPEN_CHAT
from sysinfer.engine.llm_engine import LLMEngine
from sysinfer.engine.prompt_lookup import K_MAX
from sysinfer.engine.sampling import SamplingParams
from sysinfer.limits import DRAFT_POLICIES
from sysinfer.model.model_file import read_model_file
from sysinfer.model.native_model import load_model
from sysinfer.model.tokenizer import Tokenizer
from sysinfer.model.vocab_check import check_same_vocabulary
from sysinfer.structured.constraints import compile_constraint, from_request

SETS = {"extractive": EXTRACTIVE, "open chat": OPEN_CHAT, "chinese": CHINESE, "no match": NO_MATCH,
        "constrained": CONSTRAINED}


def run_one(model, tok, prompt: list[int], max_tokens: int, speculative: bool, draft=None,
            lookup_first: bool = True, constraint: dict | None = None, draft_policy: str = "cost") -> dict:
    """One request on a fresh engine (no prefix cache carried over): its tokens, decode time, drafts.
    `constraint`: API fields of an output constraint (guided_json=..., guided_regex=...)."""
    engine = LLMEngine(model, tok, speculative=speculative, enable_prefix_cache=False,
                       draft_model=draft if speculative else None, lookup_first=lookup_first,
                       draft_policy=draft_policy)
    grammar = compile_constraint(tok, from_request(**constraint)) if constraint else None
    tokens, first, last = [], None, None
    for delta in engine.generate(prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0, grammar=grammar)):
        now = time.perf_counter()
        first = first or now
        last = now
        tokens += delta.token_ids
    s = engine.stats
    draft_s = engine.drafter.stats.seconds if engine.drafter else 0.0
    lookup_steps = engine.drafter.stats.lookup_steps if engine.drafter else 0
    return {"tokens": tokens, "decode_tokens": len(tokens) - 1, "decode_s": last - first, "draft_s": draft_s,
            "lookup_steps": lookup_steps,
            "drafted": s.draft_tokens, "accepted": s.accepted_draft_tokens, "draft_steps": s.draft_steps,
            "decode_steps": s.steps - 1}  # the first step prefilled (the prompts fit one step)


SERVER_MODES = {"on": {}, "off": {"SYSINFER_SPECULATIVE": "off"}, "always": {"SYSINFER_DRAFT_POLICY": "always"}}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def _metrics(base: str) -> dict[str, float]:
    import re

    import httpx

    text = httpx.get(base + "/metrics", timeout=30).text
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(sysinfer_\w+) (\S+)$", text, re.M)}


def stream_one(client, text: str, max_tokens: int, temperature: float = 0.0, seed: int | None = None,
               extra_body: dict | None = None) -> dict:
    """One streamed chat request (greedy by default): its text, completion tokens and decode time."""
    first = last = None
    parts, usage = [], None
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}],
                                            max_tokens=max_tokens, temperature=temperature, seed=seed, stream=True,
                                            stream_options={"include_usage": True}, extra_body=extra_body)
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            now = time.perf_counter()
            first = first or now
            last = now
            parts.append(chunk.choices[0].delta.content)
    return {"text": "".join(parts), "decode_tokens": usage.completion_tokens - 1, "decode_s": (last or 0) - (first or 0)}


def run_servers(args) -> int:
    import os

    import openai

    from support.servers import start_server

    modes = args.modes.split(",")
    env = {"SYSINFER_THREADS": str(args.threads), "SYSINFER_CTX_SIZE": "2048"}
    if args.model:
        env["SYSINFER_MODEL"] = args.model
    model_name = Path(args.model).name if args.model else "SmolLM2-135M-Instruct Q4_0"
    procs = {}
    try:
        for mode in modes:
            procs[mode] = start_server(ready_timeout=1200, **env, **SERVER_MODES[mode])
        if args.llama_server:
            from serve_streams import llama_server  # noqa: PLC0415 (benchmarks/, the script's folder)

            llama = llama_server(args.llama_server, args.model or smollm2_q4_0(), 1, 2048, args.threads, False)
            llama.start(timeout=1200)
            procs["llama"] = (llama.proc, llama.base_url, False)
            modes = modes + ["llama"]
        # llama-server: every reply max_tokens long (it may stop at a different token than ours)
        extra = {m: {"ignore_eos": True} if m == "llama" else None for m in modes}
        ours = [m for m in modes if m != "llama"]
        clients = {m: openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=3600)
                   for m, (_, base, _) in procs.items()}
        print(f"{model_name} through the server, {cpu_name()}, {os.cpu_count()} CPUs, {args.threads} threads, "
              f"modes {', '.join(modes)}, {args.max_tokens} tokens per reply, {args.rounds} rounds", flush=True)
        for m in modes:  # warm-up
            stream_one(clients[m], "Hello", 4)
        report = {}
        for set_name in args.sets.split(","):
            prompts = SETS[set_name][: args.prompts or None]
            load_start = os.getloadavg()
            before = {m: _metrics(procs[m][1]) for m in modes}
            rounds = []
            for r in range(args.rounds):
                order = modes[r % len(modes):] + modes[: r % len(modes)]
                totals = {m: {"decode_tokens": 0, "decode_s": 0.0} for m in modes}
                for name, text, *_ in prompts:
                    runs = {m: stream_one(clients[m], text, args.max_tokens, args.temperature, args.seed, extra[m])
                            for m in order}
                    texts = {runs[m]["text"] for m in ours}
                    if len(texts) != 1:
                        print(f"FAIL: {set_name}/{name}: the modes' texts differ", file=sys.stderr)
                        return 1
                    for m in modes:
                        totals[m]["decode_tokens"] += runs[m]["decode_tokens"]
                        totals[m]["decode_s"] += runs[m]["decode_s"]
                rounds.append({m: t["decode_tokens"] / t["decode_s"] for m, t in totals.items()})
                print(f"  {set_name} round {r + 1}: " + ", ".join(f"{m} {rounds[-1][m]:.2f}" for m in modes)
                      + " tok/s", flush=True)
            after = {m: _metrics(procs[m][1]) for m in modes}
            load_end = os.getloadavg()
            rate = {m: statistics.median(rd[m] for rd in rounds) for m in modes}
            drafts = {m: (after[m].get("sysinfer_draft_tokens_total", 0) - before[m].get("sysinfer_draft_tokens_total", 0),
                          after[m].get("sysinfer_accepted_draft_tokens_total", 0)
                          - before[m].get("sysinfer_accepted_draft_tokens_total", 0)) for m in modes}
            report[set_name] = {"tok_s": rate, "rounds": rounds, "drafts": drafts,
                                "load": [load_start[0], load_end[0]]}
            ratios = ", ".join(f"{m}/off x{rate[m] / rate['off']:.3f}" for m in modes if m != "off" and "off" in rate)
            if "llama" in rate:
                ratios += "".join(f", {m}/llama x{rate[m] / rate['llama']:.3f}" for m in ours)
            print(f"{set_name}: " + ", ".join(f"{m} {rate[m]:.2f} tok/s" for m in modes) + f"; {ratios}; drafts "
                  + ", ".join(f"{m} {a:.0f}/{d:.0f} accepted" for m, (d, a) in drafts.items() if m in ours and m != "off")
                  + f"; load average {load_start[0]:.1f} -> {load_end[0]:.1f}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
        return 0
    finally:
        for proc, _, _ in procs.values():
            proc.terminate()
            proc.wait(timeout=60)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of: {', '.join(SETS)}")
    ap.add_argument("--prompts", type=int, default=0, help="at most this many prompts per set (0: all)")
    ap.add_argument("--json", help="write the per-round figures here")
    ap.add_argument("--draft-model", help="draft with this GGUF instead of prompt lookup (smollm2: SmolLM2 Q4_0)")
    ap.add_argument("--model-only", action="store_true",
                    help="with --draft-model: the model drafts every step (default: prompt lookup first, the "
                         "model where it finds nothing, as the server does)")
    ap.add_argument("--server", action="store_true", help="through the HTTP API, one server per mode (see above)")
    ap.add_argument("--model", help="with --server: the GGUF to serve (default: SmolLM2-135M-Instruct Q4_0)")
    ap.add_argument("--modes", default="on,off", help="with --server: comma-separated, of: on, off, always")
    ap.add_argument("--llama-server", metavar="PATH", help="with --server: also llama.cpp's llama-server (mode llama)")
    ap.add_argument("--temperature", type=float, default=0.0,
                    help="with --server: sample at this temperature with --seed (a seeded reply is the same with and "
                         "without speculation): text a random-weight model does not repeat, so nothing to quote")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--draft-policy", choices=DRAFT_POLICIES, default="cost",
                    help="in-process runs: verify drafts where they pay (cost, the engine's default) or every draft "
                         "found (always: for checking the drafting mechanics, whatever this machine's step costs)")
    args = ap.parse_args()
    if args.server:
        return run_servers(args)
    model = load_model(smollm2_q4_0(), threads=args.threads, n_ctx=2048, kv_blocks=160, max_step_tokens=1536,
                       max_out_rows=1 + K_MAX)
    tok = Tokenizer.from_metadata(model.metadata)
    draft = None
    if args.draft_model:
        path = smollm2_q4_0() if args.draft_model == "smollm2" else args.draft_model
        check_same_vocabulary(read_model_file(smollm2_q4_0()), read_model_file(path))
        draft = load_model(path, threads=args.threads, n_ctx=2048, kv_blocks=160, max_step_tokens=1536, max_out_rows=1)
    print(f"SmolLM2-135M-Instruct Q4_0, kernels {model.kernels}, {model.n_threads} threads, "
          f"{args.max_tokens} tokens per reply, {args.rounds} rounds, drafts from "
          f"{Path(draft.path).name if draft else 'prompt lookup'}"
          f"{' after prompt lookup' if draft and not args.model_only else ''}",
          flush=True)
    run_one(model, tok, tok.encode("Hello"), 4, False)  # warm-up
    if draft:
        run_one(model, tok, tok.encode("Hello"), 4, True, draft)
    report = {}
    for set_name in args.sets.split(","):
        prompts = SETS[set_name][: args.prompts or None]
        rounds = []  # per round: {mode: totals over the set's prompts}
        for r in range(args.rounds):
            totals = {}
            order = (False, True) if r % 2 == 0 else (True, False)
            for name, text, *constraint in prompts:
                ids = tok.apply_chat_template([{"role": "user", "content": text}])
                runs = {spec: run_one(model, tok, ids, args.max_tokens, spec, draft, not args.model_only,
                                      *constraint, draft_policy=args.draft_policy) for spec in order}
                if runs[True]["tokens"] != runs[False]["tokens"]:
                    print(f"FAIL: {name}: speculation changed the greedy output", file=sys.stderr)
                    return 1
                for spec, run in runs.items():
                    t = totals.setdefault(spec, dict.fromkeys(("decode_tokens", "decode_s", "draft_s", "drafted",
                                                               "accepted", "draft_steps", "decode_steps",
                                                               "lookup_steps"), 0))
                    for key in t:
                        t[key] += run[key]
            rounds.append(totals)
            off, on = (totals[s]["decode_tokens"] / totals[s]["decode_s"] for s in (False, True))
            print(f"  {set_name} round {r + 1}: off {off:.1f} tok/s, on {on:.1f} tok/s", flush=True)
        rate = {s: statistics.median(t[s]["decode_tokens"] / t[s]["decode_s"] for t in rounds) for s in (False, True)}
        on = rounds[0][True]  # drafting is deterministic (greedy): every round drafts the same
        figures = {"tok_s_off": rate[False], "tok_s_on": rate[True], "speedup": rate[True] / rate[False],
                   "drafted": on["drafted"], "accepted": on["accepted"],
                   "acceptance": on["accepted"] / on["drafted"] if on["drafted"] else 0.0,
                   "mean_accepted_length": on["accepted"] / on["draft_steps"] if on["draft_steps"] else 0.0,
                   "tokens_per_step": on["decode_tokens"] / on["decode_steps"] if on["decode_steps"] else 1.0,
                   "draft_time_share": statistics.median(t[True]["draft_s"] / t[True]["decode_s"] for t in rounds),
                   "rounds": [{str(s): t[s] for s in t} for t in rounds]}
        report[set_name] = figures
        print(f"{set_name}: off {rate[False]:.1f} tok/s, on {rate[True]:.1f} tok/s, x{figures['speedup']:.2f}; "
              f"accepted {on['accepted']}/{on['drafted']} ({figures['acceptance']:.0%}), mean accepted length "
              f"{figures['mean_accepted_length']:.2f}, {figures['tokens_per_step']:.2f} tokens per step"
              + (f", {figures['draft_time_share']:.0%} of decode time in the draft model" if draft else "")
              + (f", {on['lookup_steps']}/{on['draft_steps']} drafting steps by lookup" if draft else ""),
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
