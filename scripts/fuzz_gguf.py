#!/usr/bin/env python3
"""Fuzzing the GGUF header reader and loader: only ModelLoadError, never a crash, hang or unbounded
allocation.

The target (`check_input`) is what `sysinfer info` / `generate` do with a file before any weight is
packed: `read_model_file` (header, metadata, hyperparameters, tensor directory) and then
`Tokenizer.from_metadata`. An input is a GGUF file's leading bytes; the harness writes it to a file
and extends that file with a sparse hole to PAD_TO bytes, so a header alone (the seeds are the
headers of the real SmolLM2 file and of the test models) stands for a whole model whose tensor data
are zeros, without writing 100 MB per input. An input passes if both calls succeed, or if they raise
ModelLoadError with a one-line message of at most MAX_MESSAGE characters; anything else (another
exception, an input over the time bound, MemoryError under the address-space limit) is a failure.

Modes:
  atheris (coverage-guided, libFuzzer; x86-64 wheels from PyPI; the corpus defaults to ./fuzz-corpus,
  seeded with the headers and the regression inputs; FUZZ_SEEDS=tiny picks only the tiny models' headers,
  FUZZ_MAX_MB / FUZZ_TIMEOUT set the limits below):
      scripts/fuzz_gguf.py atheris [-max_total_time=600] [-runs=N] [-timeout=10] [corpus dir...]
  structure-aware random mutations (no atheris needed; what CI runs, deterministic per --seed):
      scripts/fuzz_gguf.py mutate --runs 2000 --seed 1
  targeted field sweep (every count, length, type, n_dims, dim and offset of a header set to
  0, 1, 2^31, 2^32-1, 2^58+49152, 2^63, 2^64-1):
      scripts/fuzz_gguf.py sweep [--smollm2]
  replay inputs (with no files: the regression inputs of tests/data/gguf_regressions.json):
      scripts/fuzz_gguf.py replay [FILE ...]

Every mode runs under an address-space limit (--max-mb, default 2048 MiB for the whole process) and
a per-input time limit (--timeout, default 10 s, SIGALRM); failing inputs are written to --crash-dir
(default ./fuzz-crashes). Once one is fixed, keep it as a recipe in tests/data/gguf_regressions.json:
its byte edits of the tiny llama model's header, each anchored to a header field (no binary files in
the repository; `regression_inputs` rebuilds the inputs and checks each edit still finds the bytes
it replaces).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import resource
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REGRESSIONS = ROOT / "tests" / "data" / "gguf_regressions.json"
PAD_TO = 128 << 20        # inputs are extended (sparsely) to this many bytes
INTERESTING = (0, 1, 1 << 31, (1 << 32) - 1, (1 << 58) + 49152, 1 << 63, (1 << 64) - 1)
FIELD_KINDS = ("count", "length", "type", "ndims", "dim", "offset", "version")


class InputTimeout(Exception):
    pass


class Failure(Exception):
    """An input that produced something other than success or a well-formed ModelLoadError."""


def set_limits(max_mb: int) -> None:
    """Bound this process's address space: an unbounded allocation becomes a MemoryError."""
    limit = max_mb << 20
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _alarm(signum, frame):
    raise InputTimeout()


class Harness:
    """Writes inputs to one scratch file and runs the target. The file is unlinked as soon as it is
    opened and reached through /proc/self/fd, so nothing is left behind however the process ends
    (libFuzzer exits without unwinding)."""

    def __init__(self, timeout: float = 10.0):
        folder = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self.fd, name = tempfile.mkstemp(prefix="fuzz-gguf-", suffix=".gguf", dir=folder)
        os.unlink(name)
        self.path = f"/proc/self/fd/{self.fd}"
        self.timeout = timeout
        from sysinfer.model import model_file
        from sysinfer.model.tokenizer import Tokenizer

        self.ModelLoadError, self.read_model_file, self.Tokenizer = model_file.ModelLoadError, model_file.read_model_file, Tokenizer
        self.max_message = getattr(model_file, "MAX_MESSAGE", 1000)  # (older versions: replaying against them)
        signal.signal(signal.SIGALRM, _alarm)

    def close(self) -> None:
        os.close(self.fd)

    def write(self, data: bytes) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        os.ftruncate(self.fd, max(len(data), PAD_TO))

    def run(self, data: bytes) -> str:
        """'ok' or 'refused: <message>'; raises Failure for anything else."""
        self.write(data)
        signal.setitimer(signal.ITIMER_REAL, self.timeout)
        try:
            mf = self.read_model_file(self.path)
            self.Tokenizer.from_metadata(mf.metadata)
            outcome = "ok"
        except self.ModelLoadError as e:
            message = str(e)
            if len(message) > self.max_message or "\n" in message or not message:
                raise Failure(f"ModelLoadError message of {len(message)} chars: {message[:300]!r}") from None
            outcome = "refused: " + message.replace(self.path, "<file>")
        except InputTimeout:
            raise Failure(f"no answer within {self.timeout} s") from None
        except Failure:
            raise
        except BaseException as e:  # noqa: BLE001 - everything else is what we look for
            if isinstance(e, KeyboardInterrupt):
                raise
            tb = traceback.format_exception(type(e), e, e.__traceback__)
            raise Failure(f"{type(e).__name__}: {str(e)[:300]}\n{''.join(tb[-4:])[:2000]}") from None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        return outcome


# ---- seeds and header layout ----

def seed_files() -> list[str]:
    """The real SmolLM2 file (when its package is installed) and the tiny test models."""
    from support.model_files import TINY_SPECS, spm_trained_model, tiny_model

    files = [tiny_model(k) for k in TINY_SPECS] + [spm_trained_model()[1]]
    from sysinfer.model.default_model import default_model_path

    try:
        files.append(default_model_path())
    except FileNotFoundError:
        pass
    return files


def header_bytes(path: str) -> bytes:
    """The file's bytes up to its data section (the header, padded to the alignment)."""
    from sysinfer.model.gguf_header import read_header

    data_start = read_header(path)[3]
    with open(path, "rb") as f:
        return f.read(data_start)


def layout(data: bytes) -> list[tuple[str, int, int, str]]:
    """(kind, offset, size, label) of every fixed-size field of a valid header."""
    from sysinfer.model.gguf_header import parse_header

    fields: list[tuple[str, int, int, str]] = []
    parse_header(data, lambda kind, off, size, label: fields.append((kind, off, size, label)))
    return fields


def sweep_fields(fields, max_array_elements: int = 3):
    """The fields the sweep mutates: every structural field, the metadata scalar values, and only
    the first few and the last element of each array (a vocabulary has thousands)."""
    seen: dict[str, int] = {}
    out = []
    for i, f in enumerate(fields):
        kind, _, _, label = f
        if kind not in FIELD_KINDS and kind != "value":
            continue
        if label.endswith(" element"):
            seen[label] = seen.get(label, 0) + 1
            last = i + 1 == len(fields) or fields[i + 1][3] != label
            if seen[label] > max_array_elements and not last:
                continue
        out.append(f)
    return out


def set_field(data: bytes, field, value: int) -> bytes:
    _, off, size, _ = field
    raw = (value % (1 << (8 * size))).to_bytes(size, "little")
    return data[:off] + raw + data[off + size :]


def field_values(size: int) -> list[int]:
    """INTERESTING truncated to the field's width, without repeats."""
    out = []
    for v in INTERESTING:
        v %= 1 << (8 * size)
        if v not in out:
            out.append(v)
    return out


def sweep(harness: Harness, seed: bytes, name: str, max_array_elements: int = 3, log=print,
          accepted: list | None = None) -> tuple[int, list]:
    """Every swept field of `seed` set to each interesting value; (inputs run, failures). Mutants
    that still load are appended to `accepted` (their labels) when it is given."""
    fields = sweep_fields(layout(seed), max_array_elements)
    runs, failures = 0, []
    for field in fields:
        original = int.from_bytes(seed[field[1] : field[1] + field[2]], "little")
        for v in field_values(field[2]):
            if v == original:
                continue
            data = set_field(seed, field, v)
            runs += 1
            label = f"{name}: {field[3]} ({field[0]} at {field[1]}) = {v}"
            try:
                if harness.run(data) == "ok" and accepted is not None:
                    accepted.append(label)
            except Failure as e:
                failures.append((label, data, str(e)))
                log(f"FAIL {label}: {str(e).splitlines()[0]}")
    return runs, failures


# ---- structure-aware random mutation ----

def mutate(rng: random.Random, data: bytes, fields) -> bytes:
    choice = rng.random()
    header_end = len(data)
    if choice < 0.45 and fields:  # one header field to an interesting or nearby value
        field = rng.choice(fields)
        original = int.from_bytes(data[field[1] : field[1] + field[2]], "little")
        value = rng.choice(INTERESTING + (original + 1, original - 1, original * 2, rng.getrandbits(8 * field[2])))
        return set_field(data, field, value)
    if choice < 0.65:  # a few random bytes overwritten
        out = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(header_end)] = rng.getrandbits(8)
        return bytes(out)
    if choice < 0.80:  # bytes inserted or deleted (shifts everything after)
        at = rng.randrange(header_end)
        if rng.random() < 0.5:
            return data[:at] + bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 16))) + data[at:]
        return data[:at] + data[at + rng.randint(1, 16) :]
    if choice < 0.90:  # truncated
        return data[: rng.randrange(header_end)]
    # a chunk of the header copied over another place (splices strings, counts, types)
    a, b = rng.randrange(header_end), rng.randrange(header_end)
    n = rng.randint(1, 64)
    chunk = data[a : a + n]
    return data[:b] + chunk + data[b + len(chunk) :]


def run_mutations(harness: Harness, seeds: dict[str, bytes], runs: int, seed: int, max_seconds: float | None = None,
                  log=print) -> tuple[int, list, dict]:
    rng = random.Random(seed)
    layouts = {name: [f for f in layout(data) if f[0] in FIELD_KINDS or f[0] == "value"] for name, data in seeds.items()}
    names = sorted(seeds)
    failures, outcomes = [], {"ok": 0, "refused": 0}
    start = time.monotonic()
    done = 0
    for done in range(1, runs + 1):
        name = rng.choice(names)
        data = seeds[name]
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            data = mutate(rng, data, layouts[name] if data is seeds[name] or len(data) == len(seeds[name]) else [])
        try:
            outcome = harness.run(data)
            outcomes["ok" if outcome == "ok" else "refused"] += 1
        except Failure as e:
            failures.append((f"{name} mutation #{done}", data, str(e)))
            log(f"FAIL {name} mutation #{done}: {str(e).splitlines()[0]}")
        if max_seconds is not None and time.monotonic() - start > max_seconds:
            break
    return done, failures, outcomes


def save_failures(failures, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for label, data, error in failures:
        digest = hashlib.sha1(data).hexdigest()[:12]
        (folder / f"crash-{digest}.gguf").write_bytes(data)
        (folder / f"crash-{digest}.txt").write_text(f"{label}\n{error}\n")
        print(f"  saved {folder / f'crash-{digest}.gguf'} ({len(data)} bytes)")


def regression_inputs() -> dict[str, bytes]:
    """The kept failing inputs, rebuilt from their recipes: edits of the tiny llama model's header, each
    {field, kind, nth: which occurrence of that field, at: offset from the field's start, old: the
    bytes it replaces (hex, checked), new: the bytes put there (hex)}."""
    import json

    from support.model_files import tiny_model

    base = header_bytes(tiny_model("llama"))
    fields = layout(base)
    inputs = {}
    for recipe in json.loads(REGRESSIONS.read_text()):
        data = base
        spans = []
        for e in recipe["edits"]:
            matches = [f for f in fields if f[3] == e["field"] and f[0] == e["kind"]]
            start = matches[e["nth"]][1] + e["at"]
            old = bytes.fromhex(e["old"])
            if base[start : start + len(old)] != old:
                raise SystemExit(f"regression {recipe['name']}: the tiny model's header changed under the edit at "
                                 f"{e['field']!r}; rebuild the recipe")
            spans.append((start, len(old), bytes.fromhex(e["new"])))
        for start, n_old, new in sorted(spans, reverse=True):  # from the end: earlier offsets stay valid
            data = data[:start] + new + data[start + n_old :]
        inputs[recipe["name"]] = data
    return inputs


# ---- atheris ----

def run_atheris(argv: list[str], harness_timeout: float) -> None:
    import atheris

    import gguf  # noqa: F401 - libraries first, uninstrumented: coverage is of our code
    import numpy  # noqa: F401
    import sentencepiece  # noqa: F401
    import tiktoken  # noqa: F401

    with atheris.instrument_imports(include=["sysinfer"]):
        import sysinfer.model.architecture  # noqa: F401
        import sysinfer.model.bpe_tokenizer  # noqa: F401
        import sysinfer.model.model_file  # noqa: F401
        import sysinfer.model.gguf_header  # noqa: F401
        import sysinfer.model.spm_tokenizer  # noqa: F401
        import sysinfer.model.tokenizer  # noqa: F401
    harness = Harness(harness_timeout)

    def one_input(data: bytes) -> None:
        try:
            harness.run(data)
        except Failure as e:
            print(f"\nFAILURE: {e}", file=sys.stderr)
            raise

    corpus = [a for a in argv[1:] if not a.startswith("-")]
    if not corpus:  # ./fuzz-corpus, seeded with the headers (libFuzzer adds what it finds there)
        folder = Path("fuzz-corpus")
        folder.mkdir(exist_ok=True)
        only = os.environ.get("FUZZ_SEEDS", "")  # e.g. "tiny" (file names containing it)
        for path in seed_files():
            if only and only not in Path(path).name:
                continue
            (folder / (Path(path).stem + ".header")).write_bytes(header_bytes(path))
        for name, data in regression_inputs().items():
            (folder / f"{name}.regression").write_bytes(data)
        argv = argv + [str(folder)]
        print(f"corpus: {folder}", file=sys.stderr)
    if not any(a.startswith("-max_len=") for a in argv):
        argv = argv + ["-max_len=2000000"]
    if not any(a.startswith("-rss_limit_mb=") for a in argv):
        # The memory bound is RLIMIT_AS (set_limits). libFuzzer's own check reads ru_maxrss, which a
        # child inherits from its parent across fork and exec: under a big pytest process it reports
        # the parent's peak and stops at once with a false out-of-memory.
        argv = argv + ["-rss_limit_mb=0"]
    atheris.Setup(argv, one_input)
    atheris.Fuzz()  # does not return


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "atheris":
        # libFuzzer flags pass through; ours are read from the environment
        set_limits(int(os.environ.get("FUZZ_MAX_MB", "2048")))
        run_atheris([sys.argv[0]] + argv[1:], float(os.environ.get("FUZZ_TIMEOUT", "10")))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["mutate", "sweep", "replay"])
    p.add_argument("files", nargs="*", help="replay: files to run")
    p.add_argument("--runs", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-seconds", type=float, help="mutate: stop after this long")
    p.add_argument("--smollm2-only", action="store_true", help="mutate/sweep: only the SmolLM2 header")
    p.add_argument("--tiny-only", action="store_true", help="mutate/sweep: only the tiny test models")
    p.add_argument("--only", action="append", default=[], help="mutate/sweep: only seeds whose file name contains this")
    p.add_argument("--array-elements", type=int, default=3, help="sweep: array elements mutated per array")
    p.add_argument("--show-accepted", type=int, default=0, help="sweep: list this many mutants that still load")
    p.add_argument("--max-mb", type=int, default=2048, help="address-space limit of this process (MiB)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per input")
    p.add_argument("--crash-dir", default="fuzz-crashes")
    args = p.parse_args(argv)

    set_limits(args.max_mb)
    harness = Harness(args.timeout)
    start = time.monotonic()
    failures: list = []
    try:
        if args.mode == "replay":
            inputs = {Path(f).name: Path(f).read_bytes() for f in args.files} or regression_inputs()
            for name, data in inputs.items():
                try:
                    outcome = harness.run(data)
                    print(f"{name}: {outcome[:160]}")
                except Failure as e:
                    failures.append((name, data, str(e)))
                    print(f"FAIL {name}: {e}")
            runs = len(inputs)
        else:
            seeds = {}
            for path in seed_files():
                smol = "SmolLM2" in path
                if (args.smollm2_only and not smol) or (args.tiny_only and smol):
                    continue
                if args.only and not any(o in Path(path).name for o in args.only):
                    continue
                seeds[Path(path).name] = header_bytes(path)
            for name, data in seeds.items():  # every seed itself must load
                harness.run(data)
            if args.mode == "sweep":
                runs = 0
                for name, data in seeds.items():
                    accepted: list = []
                    n, f = sweep(harness, data, name, args.array_elements, accepted=accepted)
                    runs += n
                    failures += f
                    print(f"{name}: {n} inputs, {len(f)} failures, {len(accepted)} still load", flush=True)
                    for label in accepted[: args.show_accepted]:
                        print(f"  loads: {label}")
            else:
                runs, failures, outcomes = run_mutations(harness, seeds, args.runs, args.seed, args.max_seconds)
                print(f"outcomes: {outcomes}")
    finally:
        harness.close()
    seconds = time.monotonic() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.mode}: {runs} inputs in {seconds:.1f} s, {len(failures)} failures, peak RSS {peak:.0f} MiB")
    if failures:
        save_failures(failures, Path(args.crash_dir))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
