"""scripts/mca_table.py: the llvm-mca table of the Q4_0 / Q4_K inner loops for Kunpeng 920 (tsv110).

The loop finding runs everywhere (a hand-written assembly nest); the table itself only where clang and
llvm-mca are installed (skipped otherwise, as in CI): its shape, and every figure positive."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "mca_table.py"


def load_script():
    spec = importlib.util.spec_from_file_location("mca_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["mca_table"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


# A block loop (.LBB0_1) holding a loop of 4 (.LBB0_2) holding one of 2 (.LBB0_3), then a tail loop.
NEST = """
kernel:                                 // @kernel
// %bb.0:
\tmov\tx8, xzr
.LBB0_1:                                // =>This Loop Header: Depth=1
\tldr\tq0, [x1], #16
.LBB0_2:                                //   Parent Loop BB0_1 Depth=1
\tand\tv1.16b, v0.16b, v2.16b
.LBB0_3:
\tsdot\tv3.4s, v1.16b, v4.16b
\tsdot\tv5.4s, v1.16b, v4.16b
\tsubs\tx9, x9, #1
\tb.ne\t.LBB0_3
// %bb.4:
\tsdot\tv6.4s, v1.16b, v4.16b
\tsubs\tx10, x10, #1
\tb.ne\t.LBB0_2
// %bb.5:
\tsubs\tx8, x8, #1
\tcbnz\tx8, .LBB0_1
.LBB0_6:
\tadd\tx0, x0, #1
\tb.ne\t.LBB0_6
\tret
.Lfunc_end0:
other:
\tsdot\tv0.4s, v1.16b, v2.16b
"""


def test_loop_nest_found_and_weighted():
    m = load_script()
    instrs, labels = m.function_body({}, NEST, "kernel")
    assert instrs[-1] == "ret" and not any(i.startswith("sdot v0.4s") for i in instrs)  # stops at .Lfunc_end
    loops = m.find_loops(instrs, labels)
    assert [(l.header, l.depth()) for l in loops] == [(".LBB0_1", 0), (".LBB0_2", 1), (".LBB0_3", 2), (".LBB0_6", 0)]
    outer, mid, inner, _ = loops
    assert m.sdots(inner.own(instrs)) == 2 and m.sdots(mid.own(instrs)) == 1 and m.sdots(outer.own(instrs)) == 0
    # unit = the block loop, 2 levels above the deepest sdot loop: 4 x (1 + 2 x 2) sdots = 320 products
    k = m.Kernel("t", "ours", "kernel", 1, 320, (4, 2))
    u = m.unit_loop(k, instrs, loops)
    parts = m.weighted_loops(k, u)
    assert [(l.header, mult) for l, mult in parts] == [(".LBB0_1", 1), (".LBB0_2", 4), (".LBB0_3", 8)]
    assert sum(16 * m.sdots(l.own(instrs)) * mult for l, mult in parts) == k.products
    # a nest that is not the described one is refused, not miscounted
    with pytest.raises(SystemExit, match="fewer"):
        m.unit_loop(m.Kernel("t", "ours", "kernel", 1, 320, (4, 2, 2)), instrs, loops)


def test_missing_tools_are_named(tmp_path):
    # a PATH with none of the tools on it
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PATH": str(tmp_path)})
    assert out.returncode == 2 and not out.stdout
    assert "missing clang" in out.stderr and "llvm-mca" in out.stderr and "apt-get install" in out.stderr


def _tools_present() -> bool:
    m = load_script()
    _, missing = m.find_tools()
    return not missing


@pytest.mark.skipif(not _tools_present(), reason="needs clang and llvm-mca (Debian: apt-get install clang llvm)")
def test_table_shape_and_positive_figures():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=600)
    if out.returncode != 0 and "aarch64 C++ headers" in out.stderr:
        pytest.skip("no aarch64 C++ headers (Debian: g++-aarch64-linux-gnu)")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and not line.startswith("| kernel")]
    labels = [r.split("|")[1].strip() for r in rows]
    assert labels[:1] == ["ours Q4_0 GEMV"]
    assert {"ours Q4_0 GEMV", "ours Q4_0 GEMM", "ours Q4_K GEMV", "ours Q4_K GEMM"} <= set(labels)
    llama = "llama.cpp source not found" not in out.stdout
    assert len(rows) == (10 if llama else 4), out.stdout
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        assert len(cells) == 6, r
        products, cycles, per_256, ipc = int(cells[1]), float(cells[2]), float(cells[3]), float(cells[4])
        assert products > 0 and cycles > 0 and per_256 > 0 and ipc > 0, r
        assert per_256 == pytest.approx(cycles * 256 / products, rel=0.01), r  # cycles shown to 0.1
        assert re.search(r"\d+% busy|dependency chains", cells[5]), r
