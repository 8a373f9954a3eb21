"""NUMA: topology from (made-up) sysfs trees, the tensor-parallel plan, and the forced split of the
native step (SYSINFER_NUMA_NODES) against one node."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from sysinfer.topology import detect_topology, format_cpu_list, plan_shares, read_os_nodes


def make_sysfs(tmp_path, nodes: dict[int, tuple[str, int]]):
    """nodes: id -> (cpulist text, MemTotal in kB)."""
    root = tmp_path / "node"
    for i, (cpulist, kb) in nodes.items():
        d = root / f"node{i}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(cpulist + "\n")
        (d / "meminfo").write_text(f"Node {i} MemTotal:       {kb} kB\nNode {i} MemFree:        {kb // 2} kB\n")
    return root


def topo(root, allowed, env=None, **kw):
    return detect_topology(env=env or {}, sysfs_root=root, allowed=allowed, **kw)


# ---- topology ----

def test_one_node(tmp_path):
    root = make_sysfs(tmp_path, {0: ("0-3", 1 << 20)})
    t = topo(root, [0, 1, 2, 3])
    assert t.mode == "off" and len(t.nodes) == 1 and t.nodes[0].cpus == (0, 1, 2, 3)
    t = topo(root, [0, 1, 2, 3], numa="tp")
    assert t.mode == "tp" and t.nodes[0].mem_node == 0


def test_reference_server_four_nodes(tmp_path):
    """The reference deployment: 4 nodes of 24 CPUs, OMP_NUM_THREADS=88 GOMP_CPU_AFFINITY=0-21,24-45,...:
    4 nodes x 22 threads, tp by default."""
    root = make_sysfs(tmp_path, {i: (f"{24 * i}-{24 * i + 23}", 64 << 20) for i in range(4)})
    env = {"OMP_NUM_THREADS": "88", "GOMP_CPU_AFFINITY": "0-21,24-45,48-69,72-93"}
    t = topo(root, list(range(96)), env)
    assert t.mode == "tp" and [n.n_threads for n in t.nodes] == [22] * 4
    assert [n.mem_node for n in t.nodes] == [0, 1, 2, 3]
    assert t.nodes[2].cpus[0] == 48 and format_cpu_list(t.nodes[3].cpus) == "72-93"
    assert topo(root, list(range(96)), env, numa="off").nodes[0].n_threads == 88


def test_two_nodes_with_holes_and_interleaved_numbering(tmp_path):
    root = make_sysfs(tmp_path, {0: ("0,2,4,6", 1 << 20), 1: ("1,3,5,9-10", 1 << 20)})
    t = topo(root, [0, 1, 2, 3, 4, 9, 10])
    assert [n.cpus for n in t.nodes] == [(0, 2, 4), (1, 3, 9, 10)]


def test_threads_limit_picks_cpus_in_order(tmp_path):
    root = make_sysfs(tmp_path, {0: ("0-3", 1 << 20), 1: ("4-7", 1 << 20)})
    t = topo(root, list(range(8)), {"OMP_NUM_THREADS": "3"})
    assert t.mode == "off" and t.nodes[0].cpus == (0, 1, 2)  # three threads all on node 0
    t = topo(root, list(range(8)), {"GOMP_CPU_AFFINITY": "0,4,1,5"})
    assert [n.cpus for n in t.nodes] == [(0, 1), (4, 5)]


def test_node_without_memory_is_not_bound(tmp_path, caplog):
    root = make_sysfs(tmp_path, {0: ("0-1", 1 << 20), 1: ("2-3", 0)})
    with caplog.at_level(logging.WARNING):
        t = topo(root, [0, 1, 2, 3])
    assert [n.mem_node for n in t.nodes] == [0, None]
    assert "no memory" in caplog.text and t.notes


def test_affinity_naming_missing_cpus(tmp_path, caplog):
    root = make_sysfs(tmp_path, {0: ("0-3", 1 << 20)})
    with caplog.at_level(logging.WARNING):
        t = topo(root, [0, 1, 2, 3], {"GOMP_CPU_AFFINITY": "2-3,200-201"})
    assert t.nodes[0].cpus == (2, 3) and "200" in caplog.text
    with caplog.at_level(logging.WARNING):
        t = topo(root, [0, 1, 2, 3], {"GOMP_CPU_AFFINITY": "500"})
    assert t.nodes[0].cpus == (0, 1, 2, 3) and "names no CPU" in caplog.text


def test_no_sysfs_is_one_unbound_node(tmp_path):
    t = topo(tmp_path / "missing", [0, 1], numa="tp")
    assert len(t.nodes) == 1 and t.nodes[0].mem_node is None and "no NUMA information" in t.source


def test_forced_split(tmp_path):
    root = make_sysfs(tmp_path, {0: ("0-1", 1 << 20)})
    t = topo(root, [0, 1], {"SYSINFER_NUMA_NODES": "2"})
    assert t.mode == "tp" and [n.cpus for n in t.nodes] == [(0,), (1,)] and [n.mem_node for n in t.nodes] == [0, 0]
    t = topo(root, [0, 1], {"SYSINFER_NUMA_NODES": "3"}, threads=6)  # threads beyond CPUs wrap around
    assert [n.cpus for n in t.nodes] == [(0, 1), (0, 1), (0, 1)]
    assert topo(root, [0, 1], {"SYSINFER_NUMA_NODES": "2"}, numa="off").nodes[0].cpus == (0, 1)


def test_forced_split_with_too_few_cpus_is_an_error(tmp_path):
    root = make_sysfs(tmp_path, {0: ("0-1", 1 << 20)})
    with pytest.raises(ValueError, match="only 2 compute thread"):
        topo(root, [0, 1], {"SYSINFER_NUMA_NODES": "3"})
    with pytest.raises(ValueError, match="SYSINFER_NUMA_NODES"):
        topo(root, [0, 1], {"SYSINFER_NUMA_NODES": "two"})
    with pytest.raises(ValueError, match="SYSINFER_NUMA"):
        topo(root, [0, 1], {"SYSINFER_NUMA": "sideways"})


def test_read_os_nodes_of_this_machine():
    nodes = read_os_nodes()
    assert all(n.cpus for n in nodes[:1])


# ---- the plan ----

class HP:
    def __init__(self, n_head, n_head_kv, head_dim, n_ff, n_vocab, n_embd=4096, n_layer=2):
        self.n_head, self.n_head_kv, self.head_dim, self.n_ff, self.n_vocab = n_head, n_head_kv, head_dim, n_ff, n_vocab
        self.n_embd, self.n_layer = n_embd, n_layer


def check_cover(shares, hp):
    assert shares[0].kv0 == 0 and shares[-1].kv1 == hp.n_head_kv
    assert shares[0].ff0 == 0 and shares[-1].ff1 == hp.n_ff
    assert shares[0].vocab0 == 0 and shares[-1].vocab1 == hp.n_vocab
    for a, b in zip(shares, shares[1:]):
        assert (a.kv1, a.ff1, a.vocab1) == (b.kv0, b.ff0, b.vocab0)
        assert a.ff1 % 32 == 0 and a.vocab1 % 8 == 0


def test_plan_llama3_8b_on_three_nodes():
    hp = HP(32, 8, 128, 14336, 128256)
    shares = plan_shares(hp, {}, 3)
    check_cover(shares, hp)
    assert [s.kv1 - s.kv0 for s in shares] == [2, 3, 3]
    assert [s.head1 - s.head0 for s in shares] == [8, 12, 12]


def test_plan_baichuan2_13b_on_three_and_four_nodes():
    hp = HP(40, 40, 128, 13696, 125696, n_embd=5120)
    for n in (3, 4):
        shares = plan_shares(hp, {}, n)
        check_cover(shares, hp)
        assert sum(s.head1 - s.head0 for s in shares) == 40
    assert [s.head1 - s.head0 for s in plan_shares(hp, {}, 3)] == [13, 13, 14]


def test_plan_small_heads_cut_on_whole_blocks():
    hp = HP(4, 4, 16, 192, 256, n_embd=64)  # two 16-wide heads per Q8_0 block
    shares = plan_shares(hp, {}, 3)
    check_cover(shares, hp)
    assert all(((s.head1 - s.head0) * 16) % 32 == 0 for s in shares)
    assert sum(s.kv1 == s.kv0 for s in shares) == 1  # one node holds no attention


# ---- the forced split of the native step (any machine) ----

from model_files import tiny_model  # noqa: E402
from reference_forward import ReferenceModel  # noqa: E402
from test_forward import assert_close_to_reference, native_greedy, prompt_tokens, run_prefill  # noqa: E402

_models: dict = {}


def numa_model(kind: str, nodes: int, **kwargs):
    """A tiny model split across `nodes` virtual nodes (SYSINFER_NUMA_NODES), 1 = --numa off."""
    key = (kind, nodes, tuple(sorted(kwargs.items())))
    if key not in _models:
        import os

        from sysinfer.model.native_model import load_model

        old = os.environ.pop("SYSINFER_NUMA_NODES", None)
        if nodes > 1:
            os.environ["SYSINFER_NUMA_NODES"] = str(nodes)
        try:
            kwargs.setdefault("n_ctx", 1024)
            kwargs.setdefault("kv_blocks", 64)
            _models[key] = load_model(tiny_model(kind), threads=max(2, nodes), numa="tp" if nodes > 1 else "off",
                                      **kwargs)
        finally:
            os.environ.pop("SYSINFER_NUMA_NODES", None)
            if old is not None:
                os.environ["SYSINFER_NUMA_NODES"] = old
    return _models[key]


SPLIT_KINDS = ["llama", "baichuan-rope", "baichuan-alibi"]


def assert_split_close(native: np.ndarray, ref: np.ndarray) -> None:
    """test_forward's tiny-model tolerance, with room for one more Q8_0 rounding flip. A split adds
    the nodes' partial sums to the residual one after the other, x + p0 + p1, where one node adds
    x + p: the last bit of x can differ, and where that flips one Q8_0 rounding of the next matmul's
    input the tiny models' logits move by up to ~0.04 from that position on (seen: baichuan-rope,
    2 nodes, position 20 of the seed-7 prompt; other prompts show no flip)."""
    err = np.abs(native - ref)
    scale = 1 + float(ref.std())
    rel = float(np.sqrt(np.mean((native - ref) ** 2)) / ref.std())
    assert err.max() <= 3e-2 * scale and rel < 1e-2, f"max abs error {err.max():.4g} (scale {scale:.3g}), rel rms {rel:.3g}"


@pytest.mark.parametrize("nodes", [2, 3])
@pytest.mark.parametrize("kind", SPLIT_KINDS + ["llama-q4_1", "llama-f16"])
def test_split_prefill_matches_reference_and_one_node(kind, nodes):
    one, split = numa_model(kind, 1), numa_model(kind, nodes)
    assert split.n_nodes == nodes and one.n_nodes == 1
    tokens = prompt_tokens(one.n_vocab)
    a, b = run_prefill(one, tokens), run_prefill(split, tokens)
    ref = ReferenceModel(tiny_model(kind)).forward(tokens)
    assert_close_to_reference(a, ref)
    assert_split_close(b, ref)
    assert_split_close(b, a)


@pytest.mark.parametrize("nodes", [2, 3])
@pytest.mark.parametrize("kind", SPLIT_KINDS)
def test_split_greedy_tokens_identical_to_one_node(kind, nodes):
    one, split = numa_model(kind, 1), numa_model(kind, nodes)
    prompt = prompt_tokens(one.n_vocab)
    assert native_greedy(split, prompt, 24) == native_greedy(one, prompt, 24)


@pytest.mark.parametrize("kind", SPLIT_KINDS)
def test_split_batched_and_chunked(kind):
    """4 sequences mixed (prefill and decode, chunked) in one step on 3 nodes = each alone on 1 node."""
    one, split = numa_model(kind, 1), numa_model(kind, 3)
    rng = np.random.default_rng(3)
    lengths = [37, 1, 16, 5]
    seqs = [rng.integers(3, one.n_vocab, size=n).tolist() for n in lengths]
    alone = [run_prefill(one, s)[-1] for s in seqs]
    # First chunk of the long sequence alone, then everything else in one batched step.
    tables, nxt = [], 0
    for s in seqs:
        nb = -(-len(s) // one.block_size)
        tables.append(list(range(nxt, nxt + nb)))
        nxt += nb
    width = max(len(t) for t in tables)
    table = np.array([t + [-1] * (width - len(t)) for t in tables], dtype=np.int32)
    split.step(seqs[0][:20], np.arange(20), [0, 20], table[:1], [20], [])
    chunks = [seqs[0][20:]] + seqs[1:]
    starts_pos = [20, 0, 0, 0]
    tokens = sum(chunks, [])
    positions = np.concatenate([np.arange(p, p + len(c)) for p, c in zip(starts_pos, chunks)])
    starts = np.cumsum([0] + [len(c) for c in chunks])
    batched = split.step(tokens, positions, starts, table, lengths, starts[1:] - 1)
    assert_split_close(batched, np.array(alone))
    assert [int(x) for x in batched.argmax(-1)] == [int(x) for x in np.array(alone).argmax(-1)]


def test_split_long_decode_split_keys():
    """Decode over 700 tokens (split-K attention inside each node) on 2 nodes equals one node."""
    one, split = numa_model("llama", 1), numa_model("llama", 2)
    tokens = prompt_tokens(one.n_vocab, n=700, seed=9)
    table = np.arange(-(-len(tokens) // one.block_size), dtype=np.int32)[None, :]
    outs = []
    for m in (one, split):
        for start in range(0, len(tokens) - 1, 200):  # chunked prefill, as the scheduler does
            end = min(start + 200, len(tokens) - 1)
            m.step(tokens[start:end], np.arange(start, end), [0, end - start], table, [end], [])
        outs.append(m.step(tokens[-1:], [len(tokens) - 1], [0, 1], table, [len(tokens)], [0])[0].copy())
    assert_split_close(outs[1], outs[0])


@pytest.mark.parametrize("kind,nodes", [("llama", 3), ("baichuan-rope", 3), ("baichuan-alibi", 3), ("llama", 2)])
def test_node_report_shares_and_memory(kind, nodes):
    one, split = numa_model(kind, 1), numa_model(kind, nodes)
    report = split.node_report()
    hp = split.hparams
    assert [r["kv_heads"][0] for r in report][0] == 0 and report[-1]["kv_heads"][1] == hp.n_head_kv
    assert sum(r["heads"][1] - r["heads"][0] for r in report) == hp.n_head
    assert sum(r["ff"][1] - r["ff"][0] for r in report) == hp.n_ff
    assert sum(r["vocab"][1] - r["vocab"][0] for r in report) == hp.n_vocab
    # Each KV arena holds only its node's heads: together, exactly the one-node arena.
    assert sum(r["kv_bytes"] for r in report) == one.native.kv_bytes
    assert [r["threads"] for r in report] == [t.n_threads for t in split.topology.nodes]
    for r in report:  # forced split on this machine: every node's memory on its CPUs' OS node
        assert r["binding"] in ("bound", "failed")
        if r["binding"] == "bound" and r["weights_on"] >= 0:
            assert r["weights_on"] == r["mem_node"]


def test_more_nodes_than_kv_heads_is_a_logged_fallback(caplog):
    with caplog.at_level(logging.WARNING):
        _models.pop(("llama", 3, ()), None)
        m = numa_model("llama", 3)  # 2 KV heads
    assert "hold no attention heads" in caplog.text
    assert sum(r["heads"][1] == r["heads"][0] for r in m.node_report()) == 1


def test_numa_setting_is_validated():
    from sysinfer.config import ServerConfig

    assert ServerConfig.from_env({"SYSINFER_NUMA": "tp"}).numa == "tp"
    with pytest.raises(ValueError, match="numa"):
        ServerConfig(numa="sideways").validate()
