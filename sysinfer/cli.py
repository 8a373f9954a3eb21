"""`sysinfer` command line: serve, generate, info, bench, synth; and `sysinfer-server`, the reference
deployment's invocation."""

from __future__ import annotations

import argparse
import dataclasses
import socket
import sys
import time

from . import limits
from .config import ServerConfig
from .model.model_file import ModelLoadError

MODEL_HELP = "GGUF file (default: the bundled SmolLM2-135M-Instruct)"
BENCH_STEP_TOKENS = 512  # prompt tokens per step in `bench` (the server's default is 256, for memory)


def _model_path(path: str | None) -> str:
    if path:
        return path
    from .model.default_model import default_model_path

    return default_model_path()


def _run(func, args: argparse.Namespace, prog: str) -> int:
    """A command's expected failures (bad file, bad flag) as one line on stderr and exit status 2."""
    try:
        return func(args)
    except (ModelLoadError, FileNotFoundError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


def bounded(kind: type, name: str):
    """An argparse type: `kind` within limits.BOUNDS[name], so a bad value is an argument error that
    names the flag as typed (`argument --port: must be between 1 and 65535, got 99999`) before
    anything starts, with the same range the config enforces."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        problem = limits.problem(name, value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = kind.__name__
    return parse


def default_of(field: str):
    """ServerConfig's default for a field, for help texts: the one home of every default."""
    return next(f.default for f in dataclasses.fields(ServerConfig) if f.name == field)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def _shown(value, limit: int = 120) -> str:
    """A string from the file, cut for the terminal (a file may carry megabytes in general.name)."""
    text = str(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def _generic_note(kinds: dict[str, int], generic_ids: list[int]) -> str:
    """Which of a file's types the selected kernel table runs through the generic kernel (slower)."""
    from gguf import GGMLQuantizationType

    slow = sorted(k for k in kinds if GGMLQuantizationType[k].value in set(generic_ids))
    return f" ({', '.join(slow)}: generic kernel on this table, correct but slower)" if slow else ""


def cmd_info(args: argparse.Namespace) -> int:
    from . import native_info
    from .config import available_memory_bytes
    from .model.memory_plan import describe_memory
    from .model.model_file import read_model_file

    path = _model_path(args.model)
    mf = read_model_file(path)
    hp = mf.hparams
    kinds: dict[str, int] = {}
    for t in mf.tensors.values():
        kinds[t.type.name] = kinds.get(t.type.name, 0) + 1
    native = native_info()
    rows = [
        ("file", path),
        ("size", _human_bytes(mf.file_bytes)),
        ("name", _shown(mf.metadata.get("general.name", "?"))),
        ("architecture", hp.arch + ("" if hp.use_rope else " (ALiBi)")),
        ("parameters", f"{mf.n_params / 1e6:.1f} M"),
        ("layers", hp.n_layer),
        ("embedding", hp.n_embd),
        ("heads (q / kv)", f"{hp.n_head} / {hp.n_head_kv}, head size {hp.head_dim}"),
        ("feed-forward", f"{hp.n_expert} experts of {hp.n_ff}, {hp.n_expert_used} per token" if hp.n_expert else hp.n_ff),
        ("vocabulary", hp.n_vocab),
        ("context length", hp.n_ctx_train),
        ("position encoding", f"RoPE base {hp.rope_base:g}, {hp.rope_dim} dims" if hp.use_rope else "ALiBi"),
        ("output", "tied to token_embd" if "output.weight" not in mf.tensors else mf.tensors["output.weight"].type.name),
        ("tensor types", ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items()))
         + _generic_note(kinds, native.get("generic_types", []))),
        ("tokenizer", _shown(mf.metadata.get("tokenizer.ggml.model", "none"))
         + (f" (pre: {_shown(mf.metadata['tokenizer.ggml.pre'])})" if "tokenizer.ggml.pre" in mf.metadata else "")),
        ("chat template", "yes" if "tokenizer.chat_template" in mf.metadata else "none (built-in used)"),
        *describe_memory(mf, available_memory_bytes("MemTotal"), available_memory_bytes()),
        ("kernels", f"{native['kernels']} (compiled: {', '.join(native['compiled'])})"),
        ("cpu features", ", ".join(k for k in ("avx2", "fma", "f16c", "avx512", "neon", "dotprod", "i8mm") if native[k]) or "none"),
    ] + _numa_rows(mf, args.threads, args.numa)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _numa_rows(mf, threads: int | None, numa: str | None) -> list[tuple[str, str]]:
    """The topology the threads form and what each node would hold (sysinfer.topology)."""
    from .config import DEFAULT_BLOCK_SIZE
    from .topology import describe_plan, detect_topology, plan_shares

    topo = detect_topology(threads, numa)
    replicas = topo.mode == "replicate"  # every node holds the whole model: the one-node plan, per lane
    shares = plan_shares(mf.hparams, {n: int(t.type) for n, t in mf.tensors.items()},
                         1 if replicas else len(topo.nodes), DEFAULT_BLOCK_SIZE)
    lines = topo.describe()
    rows = [("numa", lines[0])] + [(f"numa {line.split(':', 1)[0]}", line.split(":", 1)[1].strip()) for line in lines[1:]]
    plan = describe_plan(mf.hparams, shares)
    if replicas:
        whole = plan[0].split(":", 1)[1].strip()
        plan = [f"lane {n.index}: a whole copy on its node: {whole}" for n in topo.nodes] + plan[1:]
    return rows + [(f"plan {line.split(':', 1)[0]}", line.split(":", 1)[1].strip()) for line in plan]


def cmd_generate(args: argparse.Namespace) -> int:
    from .engine.lanes import make_core
    from .engine.sampling import SamplingParams
    from .startup import load_serving_model

    params = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                            max_tokens=args.max_tokens, stop=args.stop or [])
    cfg = ServerConfig(model=args.model, threads=args.threads, ctx_size=args.ctx_size, speculative=args.speculative,
                       numa=args.numa, draft_model=args.draft_model, draft_lookup=not args.no_draft_lookup,
                       draft_policy=args.draft_policy or "cost").validate()
    loaded = load_serving_model(cfg, progress=args.verbose)
    tokenizer = loaded.tokenizer
    if args.chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": args.prompt}]
        prompt_ids = tokenizer.apply_chat_template(messages)
    else:
        prompt_ids = tokenizer.encode(args.prompt, add_bos=tokenizer.add_bos)
    cfg_speculation = cfg.speculation  # max_batch 1 here
    engine = make_core(loaded.model, tokenizer, cfg.engine_config(), draft_model=loaded.draft)
    start = time.perf_counter()
    first = last = None
    for delta in engine.generate(prompt_ids, params):
        first = first or time.perf_counter()
        sys.stdout.write(delta.text)
        sys.stdout.flush()
        last = delta
    sys.stdout.write("\n")
    if last and last.error:
        print(f"sysinfer: error: {last.error}", file=sys.stderr)
        return 1
    if args.verbose and last:
        n = last.usage.completion_tokens
        decode_s = time.perf_counter() - first
        rate = (n - 1) / decode_s if n > 1 and decode_s > 0 else 0.0
        drafts = (f"; drafts accepted {engine.stats.accepted_draft_tokens}/{engine.stats.draft_tokens}"
                  if cfg_speculation else "")
        print(f"[{len(prompt_ids)} prompt tokens in {first - start:.2f} s; {n} generated at {rate:.1f} tok/s; "
              f"finish: {last.finish_reason}; kernels {loaded.model.kernels}{drafts}]", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .server.app import create_app
    from .server.connections import bounded_protocol
    from .server.lifecycle import exit_status, exit_status_on_signals

    cfg = ServerConfig.from_env(
        model=args.model, model_name=args.model_name, host=args.host, port=args.port, threads=args.threads,
        ctx_size=args.ctx_size, max_batch=args.max_batch, max_queue=args.max_queue, kv_blocks=args.kv_blocks,
        kv_cache_gb=args.kv_cache_gb, temperature=args.temperature, max_tokens=args.max_tokens,
        api_key=args.api_key, prefix_cache=False if args.no_prefix_cache else None,
        request_timeout=args.request_timeout, stall_timeout=args.stall_timeout, drain_seconds=args.drain_seconds,
        speculative=args.speculative, numa=args.numa, draft_model=args.draft_model,
        draft_lookup=False if args.no_draft_lookup else None, draft_policy=args.draft_policy,
        chunk_policy=args.chunk_policy,
        reasoning_format=args.reasoning_format, reasoning_budget=args.reasoning_budget,
        **encoder_overrides(args))
    _warn_if_exposed(cfg)
    try:  # bound before anything starts: a port in use ends here, with no "serving" announced
        sock = bind_socket(cfg.host, cfg.port)
    except OSError as e:
        print(f"sysinfer: error: could not bind {cfg.host} port {cfg.port}: {e.strerror or e}", file=sys.stderr)
        return 1
    app = create_app(cfg)
    state = app.state.sysinfer
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level,  # connection limits: connections.py
                                           http=bounded_protocol(cfg.header_timeout, cfg.max_connections),
                                           timeout_graceful_shutdown=cfg.drain_seconds + 2))  # the engine ends its streams first
    # A model that can't load ends `sysinfer serve` (systemd's Restart=, a person at a terminal);
    # `uvicorn sysinfer.api:app` stays up instead and reports it on /health for its orchestrator.
    state.on_load_error = lambda: setattr(server, "should_exit", True)
    try:
        with exit_status_on_signals():
            server.run(sockets=[sock])
    finally:
        sock.close()
    if state.load_error:
        print(f"sysinfer: error: the model could not be loaded: {state.load_error}", file=sys.stderr)
        return 1
    return exit_status(state)  # 0 after a clean drain, 3 when it had to end running requests


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on host:port (raises OSError: in use, no such address...)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restart over TIME_WAIT
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _warn_if_exposed(cfg) -> None:
    """Listening beyond loopback with no key: anyone who reaches the port can use the model."""
    import ipaddress

    if cfg.api_key:
        return
    try:
        loopback = ipaddress.ip_address(cfg.host).is_loopback
    except ValueError:
        loopback = cfg.host == "localhost"
    if not loopback:
        print(f"sysinfer: warning: listening on {cfg.host} without an API key: anyone who can reach port "
              f"{cfg.port} can use the model; set --api-key (SYSINFER_API_KEY) or listen on 127.0.0.1",
              file=sys.stderr, flush=True)


def add_numa_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--numa", choices=limits.NUMA_MODES,
                   help="NUMA: tp = each node holds a slice of every layer (default when the threads span "
                        "several nodes), replicate = a whole copy per node, each serving its own sequences "
                        "(throughput at many concurrent requests), off = one node; env SYSINFER_NUMA")


def add_speculative_argument(p: argparse.ArgumentParser, default: str | None = None) -> None:
    """--speculative (on even when batching) and --no-speculative (off); neither: auto, on when max_batch
    is 1. Plain flags, no optional value: `serve --speculative MODEL.gguf` must keep meaning the model."""
    p.set_defaults(speculative=default)
    p.add_argument("--speculative", dest="speculative", action="store_const", const="on",
                   help="speculative decoding by prompt lookup even with --max-batch > 1 (default: on when "
                        "--max-batch is 1; faster when answers quote the prompt, greedy output unchanged; "
                        "env SYSINFER_SPECULATIVE=on|off|auto)")
    p.add_argument("--no-speculative", dest="speculative", action="store_const", const="off",
                   help="no speculative decoding (= --speculative off)")
    p.add_argument("--draft-model", metavar="FILE.gguf",
                   help="speculative drafts from this small model where prompt lookup finds none; it must have "
                        "the model's vocabulary (checked at start-up) and is loaded beside it with its own KV "
                        "cache (env SYSINFER_DRAFT_MODEL)")
    p.add_argument("--no-draft-lookup", action="store_true",
                   help="with --draft-model: draft with the model every step, no prompt lookup first "
                        "(env SYSINFER_DRAFT_LOOKUP=false)")
    p.add_argument("--draft-policy", choices=["cost", "always"],
                   help="cost (default): draft only where the accepted drafts expected pay for the extra rows, "
                        "as this machine's step timings show; always: verify every draft found (for tests "
                        "and measurement); env SYSINFER_DRAFT_POLICY")


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    d = default_of
    p.add_argument("model", nargs="?", help=MODEL_HELP)
    p.add_argument("-t", "--temperature", type=bounded(float, "temperature"),
                   help=f"default temperature (0 = greedy; default {d('temperature'):g})")
    p.add_argument("-n", "--max-tokens", type=bounded(int, "max_tokens"),
                   help=f"default max tokens per reply (default {d('max_tokens')})")
    p.add_argument("--host", help=f"address to listen on (default {d('host')}; 0.0.0.0 = every interface)")
    p.add_argument("--port", type=bounded(int, "port"), help=f"port (default {d('port')})")
    p.add_argument("--threads", type=bounded(int, "threads"),
                   help="compute threads (default: OMP_NUM_THREADS, else all CPUs)")
    p.add_argument("--max-batch", type=bounded(int, "max_batch"),
                   help=f"sequences decoded together (default {d('max_batch')}: single batch)")
    p.add_argument("--chunk-policy", choices=["cost", "greedy"],
                   help="greedy (default): as many prompt tokens per step as it allows; cost: a prompt chunk "
                        "beside decoding streams is the smallest that keeps the step's work per second within "
                        "5 %% of the best, as this machine's step timings show (shorter waits for the decoders; "
                        "measured no faster here: docs/benchmarks.md); env SYSINFER_CHUNK_POLICY")
    p.add_argument("--max-queue", type=bounded(int, "max_queue"),
                   help=f"sequences allowed to wait; beyond it: HTTP 429 (default {d('max_queue')})")
    p.add_argument("--ctx-size", type=bounded(int, "ctx_size"),
                   help=f"context length per sequence (default {d('ctx_size')}, at most the model's)")
    p.add_argument("--kv-blocks", type=bounded(int, "kv_blocks"),
                   help=f"KV cache size in blocks of {d('block_size')} tokens")
    p.add_argument("--kv-cache-gb", type=bounded(float, "kv_cache_gb"), help="KV cache size in GiB")
    p.add_argument("--no-prefix-cache", action="store_true", help="don't reuse cached prompt prefixes")
    p.add_argument("--api-key", help="require Authorization: Bearer KEY")
    add_numa_argument(p)
    p.add_argument("--model-name", help="model id reported by /v1/models (default: the file name)")
    add_speculative_argument(p)
    p.add_argument("--request-timeout", type=bounded(float, "request_timeout"),
                   help="seconds a request may take, queued and running; then it ends as at max_tokens "
                        f"(default {d('request_timeout'):g})")
    p.add_argument("--stall-timeout", type=bounded(float, "stall_timeout"),
                   help="seconds a streaming client may leave tokens unread before it is dropped "
                        f"(default {d('stall_timeout'):g})")
    p.add_argument("--drain-seconds", type=bounded(float, "drain_seconds"),
                   help=f"on SIGTERM, seconds running requests may go on before they are ended "
                        f"(default {d('drain_seconds'):g})")
    p.add_argument("--reasoning-format", choices=limits.REASONING_FORMATS,
                   help="a reasoning model's thinking section (<think>...</think>): deepseek = as reasoning_content, "
                        "apart from content (the default); none = left in the text (env SYSINFER_REASONING_FORMAT)")
    p.add_argument("--reasoning-budget", type=bounded(int, "reasoning_budget"),
                   help="reasoning tokens before the server closes the thinking section itself (-1 = no limit, "
                        "the default; a request's thinking_budget takes precedence; env SYSINFER_REASONING_BUDGET)")
    add_encoder_arguments(p)
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def add_encoder_arguments(p: argparse.ArgumentParser) -> None:
    """Embedding and rerank models served beside the chat model, on the same port (issue 26)."""
    d = default_of
    p.add_argument("--embedding-model", metavar="EMB.gguf",
                   help="an embedding model (BERT family) to serve on /v1/embeddings, /embed and Ollama's /api/embed; "
                        "given without a chat model, the server serves embeddings only")
    p.add_argument("--embedding-model-name", help="its id in /v1/models (default: the file name)")
    p.add_argument("--rerank-model", metavar="RR.gguf", help="a reranker (e.g. bge-reranker-v2-m3) to serve on /v1/rerank")
    p.add_argument("--rerank-model-name", help="its id in /v1/models (default: the file name)")
    p.add_argument("--encoder-slice-tokens", type=bounded(int, "encoder_slice_tokens"),
                   help="encoder tokens per native call: the longest a chat step waits for embedding work "
                        f"(default {d('encoder_slice_tokens')})")
    p.add_argument("--encoder-share", type=bounded(float, "encoder_share"),
                   help="the share of the time embedding and rerank work may take while chat streams run "
                        f"(default {d('encoder_share'):g}; 1 = no limit)")


def encoder_overrides(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name, None) for name in ("embedding_model", "embedding_model_name", "rerank_model",
                                                         "rerank_model_name", "encoder_slice_tokens", "encoder_share")}


def server_main(argv: list[str] | None = None) -> int:
    """`sysinfer-server MODEL.gguf -t 0.0 -n 4096`: the reference deployment's invocation."""
    parser = argparse.ArgumentParser(prog="sysinfer-server", description="OpenAI-compatible server (port 7860)")
    add_serve_arguments(parser)
    return _run(cmd_serve, parser.parse_args(argv), "sysinfer-server")


def cmd_bench(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .bench import format_table, run_bench, write_outputs
    from .startup import load_serving_model

    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    if not lengths or min(lengths) < 2:
        raise ValueError("--lengths must be a comma-separated list of integers >= 2")
    cfg = ServerConfig(model=args.model, threads=args.threads, ctx_size=max(lengths) + 16,
                       max_step_tokens=BENCH_STEP_TOKENS, numa=args.numa).validate()
    loaded = load_serving_model(cfg)
    model = loaded.model
    with tqdm(total=len(lengths), desc="bench", unit="length", file=sys.stderr) as bar:
        rows, bandwidth = run_bench(model, loaded.tokenizer, lengths, progress=lambda row: bar.update(1))
    print(f"model {model.path}  kernels {model.kernels}  threads {model.n_threads}  nodes {model.n_nodes}  "
          f"read bandwidth {bandwidth:.1f} GB/s  weights {model.load_stats.weight_bytes / 2**20:.0f} MiB")
    print(format_table(rows))
    write_outputs(rows, bandwidth, model, args.json, args.plot)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .model.synth_presets import describe_types, synth_like, synth_spec

    synth_like(args.like, args.output, quant=args.quant, seed=args.seed, layers=args.layers)
    print(f"wrote {args.output}: {args.like} shapes{f' (first {args.layers} layers)' if args.layers else ''}, "
          f"random weights; {describe_types(synth_spec(args.like, args.quant))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sysinfer", description="CPU inference server for GGUF language models")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="describe a GGUF model and the kernels this CPU runs")
    p.add_argument("model", nargs="?", help=MODEL_HELP)
    p.add_argument("--threads", type=bounded(int, "threads"))
    add_numa_argument(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("generate", help="stream a completion of a prompt to stdout")
    p.add_argument("model", nargs="?", help=MODEL_HELP)
    p.add_argument("--prompt", "-p", required=True)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--system", help="system message (with --chat)")
    p.add_argument("-n", "--max-tokens", type=bounded(int, "max_tokens"), default=limits.GENERATE_MAX_TOKENS,
                   help="stop after this many tokens (default %(default)s; the server's default is "
                        f"{default_of('max_tokens')})")
    p.add_argument("-t", "--temperature", type=bounded(float, "temperature"), default=0.0,
                   help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--threads", type=bounded(int, "threads"))
    p.add_argument("--ctx-size", type=bounded(int, "ctx_size"), default=default_of("ctx_size"),
                   help="context length (default %(default)s)")
    add_speculative_argument(p, default="auto")
    add_numa_argument(p)
    p.add_argument("-v", "--verbose", action="store_true", help="timings on stderr")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (port 7860)")
    add_serve_arguments(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("bench", help="tokens/s against input+output length (the reference table)")
    p.add_argument("model", nargs="?", help=MODEL_HELP)
    p.add_argument("--lengths", default="32,64,128,256,512,1024,2048,4096", help="total lengths L (L/2 in, L/2 out)")
    p.add_argument("--threads", type=bounded(int, "threads"))
    p.add_argument("--json", help="write the results as JSON")
    add_numa_argument(p)
    p.add_argument("--plot", help="write a PNG plot (matplotlib)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("synth", help="write a random-weight GGUF with a real model's exact shapes")
    p.add_argument("--like", required=True, choices=["llama3-8b", "baichuan2-13b", "smollm2-135m", "baichuan2-7b", "qwen2.5-7b",
                                                     "qwen3-8b", "qwen3-30b-a3b", "qwen3moe-mini", "deepseek-llm-7b"])
    p.add_argument("--layers", type=int,
                   help="keep only the first N layers (a cut of the same shape, e.g. to fit a big MoE in memory)")
    p.add_argument("--type", "--quant", dest="quant", choices=["q4_0", "q4_1", "q8_0", "q4_k_m", "q5_k_m"],
                   help="the matrices' type, or q4_k_m / q5_k_m: llama-quantize's mix of those names (Q4_K or Q5_K, "
                        "Q6_K output and some layers' attn_v / ffn_down) (default: the real file's: q4_1 for "
                        "smollm2-135m, q4_0 for the others)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=cmd_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _run(args.func, args, "sysinfer")


if __name__ == "__main__":
    sys.exit(main())
