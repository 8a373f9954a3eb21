"""runtime/sysinfer-bind on made-up sysfs trees: 1, 2 and 4 nodes, holes in the CPU numbering,
memory-only nodes, SMT siblings, a restricted affinity mask, --exec."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "runtime" / "sysinfer-bind"


def _load():
    loader = importlib.machinery.SourceFileLoader("sysinfer_bind", str(SCRIPT))
    spec = importlib.util.spec_from_loader("sysinfer_bind", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


bind = _load()


def make_tree(tmp_path: Path, nodes: dict[int, str], siblings: dict[int, str] | None = None) -> tuple[str, str]:
    node_root, cpu_root = tmp_path / "node", tmp_path / "cpu"
    node_root.mkdir()
    cpu_root.mkdir()
    (node_root / "online").write_text(",".join(str(n) for n in nodes) + "\n")  # not a node folder
    for n, cpulist in nodes.items():
        (node_root / f"node{n}").mkdir()
        (node_root / f"node{n}" / "cpulist").write_text(cpulist + "\n")
    for cpu, sib in (siblings or {}).items():
        (cpu_root / f"cpu{cpu}" / "topology").mkdir(parents=True)
        (cpu_root / f"cpu{cpu}" / "topology" / "thread_siblings_list").write_text(sib + "\n")
    return str(node_root), str(cpu_root)


def run(tmp_path, nodes, *args, siblings=None, allowed=None):
    node_root, cpu_root = make_tree(tmp_path, nodes, siblings)
    argv = ["--node-root", node_root, "--cpu-root", cpu_root, "--format", "json", *args]
    all_cpus = ",".join(v for v in nodes.values() if v)
    argv += ["--allowed", allowed if allowed is not None else all_cpus]
    proc = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=30)
    return proc


def result(tmp_path, nodes, *args, **kw) -> dict:
    proc = run(tmp_path, nodes, *args, **kw)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_cpulist_round_trip():
    assert bind.parse_cpulist("0-21,24-45,48-69,72-93\n") == [*range(0, 22), *range(24, 46), *range(48, 70),
                                                                *range(72, 94)]
    assert bind.parse_cpulist("") == []
    assert bind.format_cpulist([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert bind.format_cpulist([3]) == "3"
    assert bind.format_cpulist(bind.parse_cpulist("0,2-4,9")) == "0,2-4,9"
    with pytest.raises(ValueError):
        bind.parse_cpulist("5-2")


def test_reference_kunpeng_four_nodes(tmp_path):
    """The reference guide's setting on a 4 x 24-core Kunpeng 920, two cores a node left over."""
    nodes = {0: "0-23", 1: "24-47", 2: "48-71", 3: "72-95"}
    r = result(tmp_path, nodes, "--reserve", "2")
    assert r["OMP_NUM_THREADS"] == "88"
    assert r["GOMP_CPU_AFFINITY"] == "0-21,24-45,48-69,72-93"
    assert r["threads_per_node"] == 22


def test_one_node(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    r = result(tmp_path / "a", {0: "0-7"})
    assert (r["OMP_NUM_THREADS"], r["GOMP_CPU_AFFINITY"]) == ("8", "0-7")
    r = result(tmp_path / "b", {0: "0-7"}, "--reserve", "1")
    assert (r["OMP_NUM_THREADS"], r["GOMP_CPU_AFFINITY"]) == ("7", "0-6")


def test_two_nodes_interleaved_numbering(tmp_path):
    """Many x86 servers number CPUs round-robin across sockets: node 0 has the even ones."""
    r = result(tmp_path, {0: "0,2,4,6,8,10", 1: "1,3,5,7,9,11"}, "--reserve", "1")
    assert r["OMP_NUM_THREADS"] == "10"
    assert r["GOMP_CPU_AFFINITY"] == "0,2,4,6,8,1,3,5,7,9"  # node by node, so threads stay grouped


def test_holes_and_unequal_nodes(tmp_path):
    """Offline CPUs leave holes; the smallest node sets the count, so every node gets as many threads."""
    nodes = {0: "0-3,6-9", 1: "12-15,17", 2: "24-31", 3: "40-41,44-47"}
    r = result(tmp_path, nodes)
    assert r["threads_per_node"] == 5
    assert r["nodes"] == {"0": "0-3,6", "1": "12-15,17", "2": "24-28", "3": "40-41,44-46"}
    assert r["OMP_NUM_THREADS"] == "20"
    assert r["GOMP_CPU_AFFINITY"] == "0-3,6,12-15,17,24-28,40-41,44-46"


def test_memory_only_node_and_sparse_node_ids(tmp_path):
    nodes = {0: "0-3", 1: "", 4: "8-11"}  # node 1: memory only (CXL, HBM); node ids need not be dense
    r = result(tmp_path, nodes, "--reserve", "1")
    assert r["nodes"] == {"0": "0-2", "4": "8-10"}
    assert r["GOMP_CPU_AFFINITY"] == "0-2,8-10"


def test_affinity_mask_restricts(tmp_path):
    """A container's cpuset (or a Kubernetes static CPU manager's grant) covers part of the host."""
    nodes = {0: "0-23", 1: "24-47", 2: "48-71", 3: "72-95"}
    r = result(tmp_path, nodes, allowed="4-11,28-35")
    assert r["nodes"] == {"0": "4-11", "1": "28-35"}
    assert r["OMP_NUM_THREADS"] == "16"


def test_physical_cores_only(tmp_path):
    siblings = {c: f"{c % 4},{c % 4 + 4}" for c in range(8)}  # CPUs c and c+4 share a core
    r = result(tmp_path, {0: "0-7"}, "--physical", siblings=siblings)
    assert r["GOMP_CPU_AFFINITY"] == "0-3"


def test_threads_per_node_cap(tmp_path):
    r = result(tmp_path, {0: "0-15", 1: "16-31"}, "--threads-per-node", "4")
    assert r["GOMP_CPU_AFFINITY"] == "0-3,16-19"


def test_reserve_too_large_is_an_error(tmp_path):
    proc = run(tmp_path, {0: "0-3", 1: "4-5"}, "--reserve", "2")
    assert proc.returncode == 2
    assert "smallest node has 2" in proc.stderr


def test_no_numa_folders_uses_online_cpus(tmp_path):
    cpu_root = tmp_path / "cpu"
    cpu_root.mkdir()
    (cpu_root / "online").write_text("0-5\n")
    assert bind.read_nodes(str(tmp_path / "missing"), str(cpu_root)) == {0: [0, 1, 2, 3, 4, 5]}


def test_output_formats(tmp_path):
    node_root, cpu_root = make_tree(tmp_path, {0: "0-3", 1: "4-7"})
    common = [sys.executable, str(SCRIPT), "--node-root", node_root, "--cpu-root", cpu_root, "--allowed", "0-7"]
    out = subprocess.run(common, capture_output=True, text=True, check=True).stdout
    assert out == "OMP_NUM_THREADS=8\nGOMP_CPU_AFFINITY=0-7\n"
    out = subprocess.run(common + ["--format", "docker"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "-e OMP_NUM_THREADS=8 -e GOMP_CPU_AFFINITY=0-7"
    out = subprocess.run(common + ["--format", "shell"], capture_output=True, text=True, check=True).stdout
    assert "export GOMP_CPU_AFFINITY=0-7" in out


def test_exec_sets_the_variables_and_keeps_explicit_ones(tmp_path):
    node_root, cpu_root = make_tree(tmp_path, {0: "0-3", 1: "4-7"})
    probe = "import os; print(os.environ['OMP_NUM_THREADS'], os.environ['GOMP_CPU_AFFINITY'])"
    cmd = [sys.executable, str(SCRIPT), "--node-root", node_root, "--cpu-root", cpu_root, "--allowed", "0-7",
           "--reserve", "1", "--exec", "--", sys.executable, "-c", probe]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "GOMP_CPU_AFFINITY")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["6", "0-2,4-6"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "3",
                                                                    "GOMP_CPU_AFFINITY": "0-2"}, timeout=30)
    assert proc.stdout.split() == ["3", "0-2"]


def test_this_host(tmp_path):
    """On the real sysfs: a valid plan within this process's CPUs."""
    proc = subprocess.run([sys.executable, str(SCRIPT), "--format", "json"], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert set(bind.parse_cpulist(r["GOMP_CPU_AFFINITY"])) <= os.sched_getaffinity(0)
    assert int(r["OMP_NUM_THREADS"]) == len(bind.parse_cpulist(r["GOMP_CPU_AFFINITY"]))
