"""NUMA topology and the tensor-parallel plan: which CPUs form each node, and which heads, FFN columns
and vocabulary rows each node holds.

Nodes come from sysfs (/sys/devices/system/node/node*/cpulist and meminfo), intersected with the
CPUs the compute threads are pinned to (sysinfer.threads.resolve_threads: --threads, OMP_NUM_THREADS,
GOMP_CPU_AFFINITY, the process's affinity mask). SYSINFER_NUMA_NODES=N splits those threads into N
virtual nodes instead (in thread order), so the multi-node code runs on a one-node machine; each
virtual node's memory goes to the OS node of its first CPU.

Modes (--numa / SYSINFER_NUMA): "auto" (tp when the threads span more than one node, else off), "tp"
(tensor parallel across nodes), "replicate" (a whole copy of the weights per node, each node its own
lane of sequences: sysinfer/engine/lanes.py), "off" (one node, no memory binding: the behaviour
before NUMA support).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from .limits import NUMA_MODES  # one home: the config and the CLI read it too
from .threads import parse_cpu_list, resolve_threads

log = logging.getLogger("sysinfer.topology")

SYSFS_NODES = "/sys/devices/system/node"


@dataclass(frozen=True)
class OsNode:
    """A NUMA node as the OS reports it."""
    id: int
    cpus: tuple[int, ...]
    mem_bytes: int  # 0: a node without memory (CPUs only)


@dataclass(frozen=True)
class Node:
    """One node of the plan: the threads that run its share of every layer, pinned in this order."""
    index: int                 # 0..N-1
    cpus: tuple[int, ...]      # one entry per thread (a CPU may repeat when threads > CPUs)
    mem_node: int | None       # OS node its weights and KV arena are bound to (None: not bound)
    os_nodes: tuple[int, ...]  # OS nodes its CPUs belong to

    @property
    def n_threads(self) -> int:
        return len(self.cpus)


@dataclass
class Topology:
    mode: str                  # "tp", "replicate" or "off" once resolved
    nodes: list[Node]
    source: str                # where the nodes came from, for `sysinfer info`
    os_nodes: list[OsNode] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # fallbacks taken (also logged)

    @property
    def n_threads(self) -> int:
        return sum(n.n_threads for n in self.nodes)

    def describe(self) -> list[str]:
        lines = [f"mode {self.mode}, {len(self.nodes)} node(s), {self.n_threads} thread(s); {self.source}"]
        for n in self.nodes:
            mem = "memory not bound" if n.mem_node is None else f"memory on OS node {n.mem_node}"
            lines.append(f"node {n.index}: {n.n_threads} thread(s) on CPUs {format_cpu_list(n.cpus)} ({mem})")
        return lines + [f"note: {m}" for m in self.notes]


def format_cpu_list(cpus) -> str:
    """[0, 1, 2, 5] -> "0-2,5" (order kept; runs of consecutive CPUs folded)."""
    out: list[str] = []
    cpus = list(cpus)
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        out.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(out)


def read_os_nodes(root: str | os.PathLike = SYSFS_NODES) -> list[OsNode]:
    """Nodes with their CPUs and memory from sysfs; [] when sysfs has no node information."""
    base = Path(root)
    nodes = []
    if not base.is_dir():
        return []
    for d in sorted(base.glob("node[0-9]*"), key=lambda p: int(p.name[4:])):
        try:
            text = (d / "cpulist").read_text().strip()
        except OSError:
            continue
        cpus = tuple(parse_cpu_list(text)) if text else ()
        mem = 0
        try:
            for line in (d / "meminfo").read_text().splitlines():
                parts = line.split()
                if len(parts) >= 4 and parts[2] == "MemTotal:":
                    mem = int(parts[3]) * 1024
        except (OSError, ValueError):
            mem = 0
        nodes.append(OsNode(int(d.name[4:]), cpus, mem))
    return nodes


def _note(notes: list[str], msg: str) -> None:
    log.warning("%s", msg)
    notes.append(msg)


def resolve_mode(numa: str | None, env: dict[str, str]) -> str:
    mode = (numa or env.get("SYSINFER_NUMA", "") or "auto").strip().lower()
    if mode not in NUMA_MODES:
        raise ValueError(f"--numa / SYSINFER_NUMA must be one of {', '.join(NUMA_MODES)}, got {mode!r}")
    return mode


def detect_topology(threads: int | None = None, numa: str | None = None, env: dict[str, str] | None = None,
                    sysfs_root: str | os.PathLike = SYSFS_NODES, allowed: list[int] | None = None) -> Topology:
    """The nodes the compute threads form (see the module doc). `allowed` overrides the process's
    affinity mask (tests)."""
    env = os.environ if env is None else env
    mode = resolve_mode(numa, env)
    n_threads, cpus = resolve_threads(threads, env, allowed=allowed)
    thread_cpus = [cpus[i % len(cpus)] for i in range(n_threads)]
    notes: list[str] = []
    os_nodes = read_os_nodes(sysfs_root)
    node_of = {c: n.id for n in os_nodes for c in n.cpus}
    memory = {n.id: n.mem_bytes for n in os_nodes}

    def mem_node_for(os_id: int | None) -> int | None:
        if os_id is None:
            return None
        if memory.get(os_id, 0) <= 0:
            _note(notes, f"OS node {os_id} has no memory: its share is not bound (the kernel places it)")
            return None
        return os_id

    forced = env.get("SYSINFER_NUMA_NODES", "").strip()
    if forced:
        try:
            n = int(forced)
        except ValueError:
            raise ValueError(f"SYSINFER_NUMA_NODES={forced!r} is not a number") from None
        if n < 1:
            raise ValueError(f"SYSINFER_NUMA_NODES must be at least 1, got {n}")
        if n > n_threads:
            raise ValueError(f"SYSINFER_NUMA_NODES={n} but only {n_threads} compute thread(s): "
                             f"every node needs at least one (raise --threads or lower the node count)")
        if mode == "off":
            _note(notes, "SYSINFER_NUMA_NODES is ignored with --numa off")
        else:
            nodes = []
            for i in range(n):
                part = thread_cpus[n_threads * i // n: n_threads * (i + 1) // n]
                owners = tuple(sorted({node_of[c] for c in part if c in node_of}))
                nodes.append(Node(i, tuple(part), mem_node_for(node_of.get(part[0])), owners))
            return Topology("replicate" if mode == "replicate" else "tp", nodes,
                            f"forced split SYSINFER_NUMA_NODES={n} of the usable CPUs",
                            os_nodes, notes)

    if not os_nodes:
        source = "no NUMA information in sysfs: one node"
        groups: dict[int | None, list[int]] = {None: thread_cpus}
    else:
        source = f"sysfs: {len(os_nodes)} OS node(s)"
        groups = {}
        unknown = sorted({c for c in thread_cpus if c not in node_of})
        if unknown:
            _note(notes, f"CPUs {format_cpu_list(unknown)} belong to no node in sysfs: counted with node "
                         f"{os_nodes[0].id}")
        for c in thread_cpus:
            groups.setdefault(node_of.get(c, os_nodes[0].id), []).append(c)
        groups = dict(sorted(groups.items(), key=lambda kv: kv[0]))
    if mode == "auto":
        mode = "tp" if len(groups) > 1 else "off"
    if mode == "off":
        only = next(iter(groups)) if len(groups) == 1 else None
        return Topology("off", [Node(0, tuple(thread_cpus), None, tuple(k for k in groups if k is not None))],
                        source + ("" if only is not None or len(groups) == 1 else "; --numa off: one node"),
                        os_nodes, notes)
    nodes = [Node(i, tuple(c), mem_node_for(k), (k,) if k is not None else ())
             for i, (k, c) in enumerate(groups.items())]
    if mode == "replicate" and len(nodes) == 1:
        _note(notes, "--numa replicate but the compute threads are on one node: one lane, one copy")
    return Topology(mode, nodes, source, os_nodes, notes)


# ---- The tensor-parallel plan ----

def row_bytes(type_id: int, cols: int) -> int:
    be, bb = GGML_QUANT_SIZES[GGMLQuantizationType(int(type_id))]
    return cols // be * bb


def block_elems(type_id: int) -> int:
    """Elements per block of a GGML type (1, 32 or 256 for the types the native core takes)."""
    return GGML_QUANT_SIZES[GGMLQuantizationType(int(type_id))][0]


def _widest_block(tensor_types: dict[str, int], suffix: str) -> int:
    """The largest block of any layer's `suffix` matrix (a file may mix types across layers)."""
    return max([32] + [block_elems(t) for name, t in tensor_types.items() if name.endswith(suffix)])


@dataclass(frozen=True)
class NodeShare:
    """What one node holds: KV heads [kv0, kv1) with their query heads, FFN columns [ff0, ff1) (gate
    and up rows, down columns), vocabulary rows [vocab0, vocab1) of the output projection. A mixture
    of experts cuts its experts' down by rows instead, [down0, down1) of the model's width over all
    the FFN columns (an expert's few columns, 768 in Qwen3-30B-A3B, are 3 K-quant blocks: 2 nodes could
    only take them 1 : 2, a 4th node none); empty for a dense model."""
    kv0: int
    kv1: int
    head0: int
    head1: int
    ff0: int
    ff1: int
    vocab0: int
    vocab1: int
    weight_bytes: int = 0
    kv_bytes_per_block: int = 0
    down0: int = 0
    down1: int = 0

    def native(self) -> dict:
        return {"kv_heads": [self.kv0, self.kv1], "ff": [self.ff0, self.ff1], "vocab": [self.vocab0, self.vocab1],
                "down_rows": [self.down0, self.down1]}


def _split_units(n_items: int, unit: int, n_nodes: int) -> list[tuple[int, int]]:
    """[begin, end) of n_items for each node, cut only at multiples of `unit`, balanced."""
    units = -(-n_items // unit)
    return [(min(n_items, units * i // n_nodes * unit), min(n_items, units * (i + 1) // n_nodes * unit))
            for i in range(n_nodes)]


def plan_shares(hp, tensor_types: dict[str, int], n_nodes: int, block_size: int = 16) -> list[NodeShare]:
    """The split of every layer across n_nodes (the same for every layer). tensor_types: GGUF tensor
    name -> GGML type id (every layer's attn_output and ffn_down, and output/token_embd, are consulted
    for alignment; bytes use every layer's own types)."""
    hd, group = hp.head_dim, hp.n_head // hp.n_head_kv
    # KV heads are cut where the attention output's columns (whole Q8_0 blocks of the activation,
    # whole weight blocks of attn_output) can be cut.
    wo_block = _widest_block(tensor_types, ".attn_output.weight")
    kv_unit = 1
    while (kv_unit * group * hd) % wo_block and kv_unit < hp.n_head_kv:
        kv_unit += 1
    moe = getattr(hp, "n_expert", 0)
    # A dense FFN's columns are down's: whole blocks of its type. An expert's are only gate/up rows
    # (32 at a time, the SwiGLU's units) and its down is cut by rows, in tiles of 8.
    ff_block = 32 if moe else _widest_block(tensor_types, ".ffn_down.weight")
    kv = _split_units(hp.n_head_kv, kv_unit, n_nodes)
    ff = _split_units(hp.n_ff, ff_block, n_nodes)
    down = _split_units(hp.n_embd, 8, n_nodes) if moe else [(0, 0)] * n_nodes
    vocab = _split_units(hp.n_vocab, 8, n_nodes)
    out_type = tensor_types.get("output.weight", tensor_types.get("token_embd.weight", 2))
    shares = []
    for i in range(n_nodes):
        (k0, k1), (f0, f1), (v0, v1), (d0, d1) = kv[i], ff[i], vocab[i], down[i]
        nq, nkv, nf = (k1 - k0) * group * hd, (k1 - k0) * hd, f1 - f0
        wbytes = (v1 - v0) * row_bytes(out_type, hp.n_embd)
        for layer in range(hp.n_layer):
            p = f"blk.{layer}."
            t = lambda name: tensor_types.get(p + name + ".weight", 2)  # noqa: E731
            wbytes += nq * row_bytes(t("attn_q"), hp.n_embd) + nkv * row_bytes(t("attn_k"), hp.n_embd)
            wbytes += nkv * row_bytes(t("attn_v"), hp.n_embd) + hp.n_embd * row_bytes(t("attn_output"), nq)
            if moe:  # each node holds its gate/up and down rows of every expert (and the router, shared)
                wbytes += moe * nf * (row_bytes(t("ffn_gate_exps"), hp.n_embd) + row_bytes(t("ffn_up_exps"), hp.n_embd))
                wbytes += moe * (d1 - d0) * row_bytes(t("ffn_down_exps"), hp.n_ff)
            else:
                wbytes += nf * (row_bytes(t("ffn_gate"), hp.n_embd) + row_bytes(t("ffn_up"), hp.n_embd))
                wbytes += hp.n_embd * row_bytes(t("ffn_down"), nf)
        shares.append(NodeShare(k0, k1, k0 * group, k1 * group, f0, f1, v0, v1, wbytes,
                                2 * hp.n_layer * nkv * block_size * 2, d0, d1))
    return shares


def plan_notes(hp, shares: list[NodeShare]) -> list[str]:
    notes = []
    idle = [i for i, s in enumerate(shares) if s.kv0 == s.kv1]
    if idle:
        notes.append(f"{len(shares)} nodes but {hp.n_head_kv} KV heads (cut in groups whole Q8_0 blocks allow): "
                     f"node(s) {', '.join(map(str, idle))} hold no attention heads, only FFN and vocabulary rows")
    return notes


def _span(begin: int, end: int) -> str:
    return f"{begin}-{end - 1}" if end > begin else "none"


def describe_plan(hp, shares: list[NodeShare]) -> list[str]:
    lines = []
    for i, s in enumerate(shares):
        lines.append(f"node {i}: KV heads {s.kv0}-{s.kv1 - 1} (query heads {s.head0}-{s.head1 - 1}), "
                     if s.kv1 > s.kv0 else f"node {i}: no attention heads, ")
        ffn = (f"experts' FFN columns {_span(s.ff0, s.ff1)} and down rows {_span(s.down0, s.down1)}"
               if s.down1 > s.down0 else f"FFN columns {_span(s.ff0, s.ff1)}")
        lines[-1] += (f"{ffn}, vocabulary rows {_span(s.vocab0, s.vocab1)}; "
                      f"weights {s.weight_bytes / 2**20:.1f} MiB, KV {s.kv_bytes_per_block / 1024:.1f} KiB per block")
    return lines + [f"note: {m}" for m in plan_notes(hp, shares)]
