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


def test_plan_qwen3_30b_a3b_gives_every_node_its_share_of_every_expert():
    """Qwen3-30B-A3B's Q4_K_M experts on 2 and 4 nodes (the Kunpeng 920 server has 4): an expert's 768
    FFN columns are 3 K-quant blocks of its down, which cut by columns gave 2 nodes 1 : 2 of the expert
    bytes and a 4th node none; now gate/up rows are cut at 32 and down by rows, so every node holds
    the same bytes of every expert."""
    from gguf import GGMLQuantizationType as QT

    hp = HP(32, 4, 128, 768, 151936, n_embd=2048, n_layer=2)
    hp.n_expert = 128
    types = {f"blk.{i}.{name}.weight": int(t) for i in range(2) for name, t in
             [("attn_q", QT.Q4_K), ("attn_k", QT.Q4_K), ("attn_v", QT.Q6_K), ("attn_output", QT.Q4_K),
              ("ffn_gate_exps", QT.Q4_K), ("ffn_up_exps", QT.Q4_K), ("ffn_down_exps", QT.Q6_K)]}
    types["output.weight"] = int(QT.Q6_K)
    expert_bytes = 2 * 128 * (2 * 768 * 144 * 2048 // 256 + 2048 * 210 * 768 // 256)
    for n in (2, 4):
        shares = plan_shares(hp, types, n)
        check_cover(shares, hp)
        assert [s.ff1 - s.ff0 for s in shares] == [768 // n] * n
        assert [(s.down0, s.down1) for s in shares] == [(2048 * i // n, 2048 * (i + 1) // n) for i in range(n)]
        others = [s.weight_bytes - expert_bytes // n for s in shares]  # attention and vocabulary rows
        assert len(set(others)) == 1 and others[0] > 0, others


def test_plan_small_heads_cut_on_whole_blocks():
    hp = HP(4, 4, 16, 192, 256, n_embd=64)  # two 16-wide heads per Q8_0 block
    shares = plan_shares(hp, {}, 3)
    check_cover(shares, hp)
    assert all(((s.head1 - s.head0) * 16) % 32 == 0 for s in shares)
    assert sum(s.kv1 == s.kv0 for s in shares) == 1  # one node holds no attention


# ---- the forced split of the native step (any machine) ----

from support.model_files import tiny_model  # noqa: E402
from support.reference_forward import ReferenceModel  # noqa: E402
from test_forward import FLIP_SENSITIVE, assert_close_to_reference, native_greedy, prompt_tokens, run_prefill  # noqa: E402

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
@pytest.mark.parametrize("kind", SPLIT_KINDS + ["llama-q4_1", "llama-f16", "qwen2", "qwen3", "qwen3moe",
                                  "qwen3moe-kquants"])
def test_split_prefill_matches_reference_and_one_node(kind, nodes):
    one, split = numa_model(kind, 1), numa_model(kind, nodes)
    assert split.n_nodes == nodes and one.n_nodes == 1
    tokens = prompt_tokens(one.n_vocab)
    a, b = run_prefill(one, tokens), run_prefill(split, tokens)
    ref = ReferenceModel(tiny_model(kind)).forward(tokens)
    assert_close_to_reference(a, ref, FLIP_SENSITIVE.get(kind, 5e-3))
    assert_split_close(b, ref)
    assert_split_close(b, a)


@pytest.mark.parametrize("nodes", [2, 3])
@pytest.mark.parametrize("kind", SPLIT_KINDS + ["qwen2", "qwen3", "qwen3moe", "qwen3moe-kquants"])
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


@pytest.mark.parametrize("kind", ["qwen2", "qwen3", "qwen3moe"])
def test_replicate_equals_one_node(kind, monkeypatch):
    """--numa replicate on the Qwen architectures: each replica's logits equal one node's, bit for bit."""
    from sysinfer.model.native_model import load_model

    monkeypatch.setenv("SYSINFER_NUMA_NODES", "2")
    two = load_model(tiny_model(kind), threads=2, numa="replicate", n_ctx=256, kv_blocks=16)
    one = numa_model(kind, 1)
    assert len(two.replicas) == 2
    tokens = prompt_tokens(one.n_vocab, n=40)
    expected = run_prefill(one, tokens)
    for replica in two.replicas:
        np.testing.assert_array_equal(run_prefill(replica, tokens), expected)


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


@pytest.mark.parametrize("nodes", [3, 4])
def test_moe_nodes_each_hold_their_share_of_every_expert(nodes):
    """The K-quant MoE (512 FFN columns: 2 blocks of 256 in its Q6_K down) on 3 and 4 nodes: cut by
    down's columns, 1 or 2 nodes held no expert at all; now every node holds its gate/up rows (32 at a
    time) and its down rows of every expert, the bytes within a tile of even, and greedy decoding
    equals one node's."""
    one, split = numa_model("qwen3moe-kquants", 1), numa_model("qwen3moe-kquants", nodes)
    hp = split.hparams
    report = split.node_report()
    assert [r["ff"] for r in report] == [[hp.n_ff * i // nodes // 32 * 32, hp.n_ff * (i + 1) // nodes // 32 * 32]
                                         for i in range(nodes)]
    assert [r["down_rows"] for r in report] == [[hp.n_embd * i // nodes // 8 * 8, hp.n_embd * (i + 1) // nodes // 8 * 8]
                                                for i in range(nodes)]
    assert all(r["ff"][1] > r["ff"][0] and r["down_rows"][1] > r["down_rows"][0] for r in report)
    prompt = prompt_tokens(one.n_vocab)
    ref = ReferenceModel(tiny_model("qwen3moe-kquants")).forward(prompt)
    assert_split_close(run_prefill(split, prompt), ref)
    assert native_greedy(split, prompt, 24) == native_greedy(one, prompt, 24)


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


# ---- --numa replicate: a whole copy per node, one lane each (forced split on any machine) ----

import anyio  # noqa: E402

from sysinfer.engine.async_engine import AsyncEngine  # noqa: E402
from sysinfer.engine.errors import EngineClosedError  # noqa: E402
from sysinfer.engine.lanes import Lanes  # noqa: E402
from sysinfer.engine.sampling import SamplingParams  # noqa: E402
from sysinfer.model.tokenizer import Tokenizer  # noqa: E402
from test_engine_real import QUESTIONS, alone, chat_ids, serve  # noqa: E402

_replicated: dict = {}


def replicated_smollm2():
    """SmolLM2 Q4_0 as two replicas (SYSINFER_NUMA_NODES=2, --numa replicate), and one node."""
    if not _replicated:
        import os

        from support.model_files import smollm2_q4_0

        from sysinfer.model.native_model import load_model

        old = os.environ.get("SYSINFER_NUMA_NODES")
        os.environ["SYSINFER_NUMA_NODES"] = "2"
        try:
            _replicated["two"] = load_model(smollm2_q4_0(), threads=2, numa="replicate", n_ctx=1024, kv_blocks=64)
        finally:
            os.environ.pop("SYSINFER_NUMA_NODES", None)
            if old is not None:
                os.environ["SYSINFER_NUMA_NODES"] = old
        _replicated["one"] = load_model(smollm2_q4_0(), threads=2, numa="off", n_ctx=1024, kv_blocks=64)
        _replicated["tok"] = Tokenizer.from_metadata(_replicated["one"].metadata)
    return _replicated["two"], _replicated["one"], _replicated["tok"]


def test_replicate_loads_one_whole_copy_per_node():
    two, one, _ = replicated_smollm2()
    assert len(two.replicas) == 2 and two.n_nodes == 2 and two.topology.mode == "replicate"
    report = two.node_report()
    assert [r["lane"] for r in report] == [0, 1] and [r["cpus"] for r in report] == [[0], [1]]
    for r in report:  # each replica holds everything: the one-node shares and bytes
        assert r["heads"] == [0, one.hparams.n_head] and r["ff"] == [0, one.hparams.n_ff]
        assert r["binding"] in ("bound", "failed") and r["kv_bytes"] == one.native.kv_bytes
    assert two.load_stats.weight_bytes == 2 * one.load_stats.weight_bytes
    for replica in two.replicas:
        assert replica.n_nodes == 1 and replica.native.n_threads == 1
        pages = replica.native.page_report()[0]
        mem = replica.topology.nodes[0].mem_node
        if mem is not None and report[0]["binding"] == "bound":
            assert set(pages["weights"]) == {mem} and set(pages["kv"]) == {mem}


def test_replicate_lanes_equal_one_node_and_spread():
    """Six requests over two lanes: greedy tokens equal each alone on one node, three per lane, every
    lane's KV blocks free at the end; both lanes step in the same engine step."""
    two, one, tok = replicated_smollm2()
    prompts = [chat_ids(tok, q) for q in QUESTIONS[:6]]
    engine = AsyncEngine(two, tok, max_batch=4)
    assert isinstance(engine.core, Lanes) and len(engine.core.lanes) == 2
    seen: list[int] = []
    add = engine.core.add_request

    def record(*args, **kwargs):
        seq = add(*args, **kwargs)
        seen.append(engine.core._lane_of[seq.request_id])
        return seq

    engine.core.add_request = record
    out = anyio.run(serve, engine, prompts)
    assert [out[i] for i in range(6)] == alone(one, tok, prompts)
    assert sorted(seen) == [0, 0, 0, 1, 1, 1]
    lanes = engine.lane_snapshots()
    assert [s.tokens_generated for s in lanes] == [48, 48]  # 3 requests x 16 tokens each
    assert all(lane.blocks.num_used == 0 for lane in engine.core.lanes) and engine.blocks.num_used == 0
    total = engine.snapshot()
    assert total.tokens_generated == 96 and total.steps == max(s.steps for s in lanes) < 6 * 16
    assert not engine.core._lane_of and not engine.by_id


def test_replicate_request_with_n_choices_equals_one_node():
    """With --numa replicate every request with n >= 2 answered 500 (Lanes had no check_prompt): the
    three greedy choices now equal the one-node answer."""
    from sysinfer.server.choices import choice_params

    two, one, tok = replicated_smollm2()
    prompt = chat_ids(tok, QUESTIONS[0])
    engine = AsyncEngine(two, tok, max_batch=2)
    got = []

    async def main():
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.run)
            params = choice_params(SamplingParams(max_tokens=16, ignore_eos=True), 3)
            seq = engine.submit(prompt, params[0], more_choices=params[1:])
            async for d in engine.stream(seq):
                got.append(d)
            await engine.shutdown()

    anyio.run(main)
    want = alone(one, tok, [prompt])[0]
    assert [[t for d in got if d.choice == c for t in d.token_ids] for c in range(3)] == [want] * 3
    assert all(lane.blocks.num_used == 0 for lane in engine.core.lanes) and not engine.by_id


def test_replicate_abort_and_drain_across_lanes():
    two, _, tok = replicated_smollm2()
    prompts = [chat_ids(tok, q) for q in QUESTIONS[:4]]
    engine = AsyncEngine(two, tok, max_batch=2)
    out = anyio.run(serve, engine, prompts, 64, 3)  # every client leaves after 3 tokens
    assert all(len(v) >= 3 for v in out.values())
    assert all(lane.blocks.num_used == 0 for lane in engine.core.lanes) and not engine.by_id

    engine = AsyncEngine(two, tok, max_batch=2)
    finishes: list[str] = []

    async def main():
        async def one(p):
            async for d in engine.generate(p, SamplingParams(max_tokens=500, ignore_eos=True)):
                if d.finish_reason:
                    finishes.append(d.finish_reason)

        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.run)
            for p in prompts:
                tg.start_soon(one, p)
            while engine.stats.tokens_generated < 4:
                await anyio.sleep(0.01)
            assert {engine.core._lane_of[r] for r in engine.by_id} == {0, 1}
            await engine.drain(0)
            with pytest.raises(EngineClosedError):
                engine.submit(prompts[0], SamplingParams(max_tokens=4))

    anyio.run(main)
    assert finishes == ["abort"] * 4
    assert all(lane.blocks.num_used == 0 for lane in engine.core.lanes) and not engine.by_id


def test_replicate_failed_lane_step_ends_only_its_requests():
    two, _, tok = replicated_smollm2()
    engine = AsyncEngine(two, tok, max_batch=2)
    core = engine.core
    broken = core.lanes[1]
    real = broken.execute

    def fail(plan):
        raise RuntimeError("lane 1 broke")

    broken.execute = fail
    try:
        prompts = [chat_ids(tok, q) for q in QUESTIONS[:2]]
        seqs = [core.add_request(p, SamplingParams(max_tokens=4, ignore_eos=True)) for p in prompts]
        events = []
        while core.has_work():
            events += core.step()
    finally:
        broken.execute = real
    ends = {seq.request_id: d.finish_reason for seq, d in events if d.finish_reason}
    # The first request went to lane 0 (least loaded, lowest index), the second to lane 1.
    assert ends == {seqs[0].request_id: "length", seqs[1].request_id: "error"}, ends
    assert not core._lane_of and not core.by_id
    assert all(x.blocks.num_used == 0 for x in core.lanes)


def test_lane_metrics():
    from sysinfer.server.metrics import Metrics

    two, _, tok = replicated_smollm2()
    engine = AsyncEngine(two, tok, max_batch=2)
    engine.core.add_request(chat_ids(tok, QUESTIONS[0]), SamplingParams(max_tokens=4))
    metrics = Metrics()
    metrics.observe_engine(engine.snapshot())
    metrics.observe_lanes(engine.lane_snapshots())
    text = metrics.render()
    assert 'sysinfer_lane_waiting_sequences{lane="0"} 1.0' in text
    assert 'sysinfer_lane_waiting_sequences{lane="1"} 0.0' in text
    assert "sysinfer_waiting_sequences 1.0" in text


def test_info_plan_for_replicate(monkeypatch):
    from support.model_files import tiny_model

    from sysinfer.cli import _numa_rows
    from sysinfer.model.model_file import read_model_file

    monkeypatch.setenv("SYSINFER_NUMA_NODES", "2")
    rows = dict(_numa_rows(read_model_file(tiny_model("llama")), 2, "replicate"))
    assert rows["numa"].startswith("mode replicate, 2 node(s)")
    assert rows["plan lane 0"] == rows["plan lane 1"] and "a whole copy" in rows["plan lane 1"]


def test_kv_cache_sized_per_replica(monkeypatch):
    from sysinfer import config
    from sysinfer.config import ServerConfig, kv_block_bytes, kv_blocks_for

    hp = HP(32, 8, 128, 14336, 128256)
    hp.n_layer = 32
    per_block = kv_block_bytes(hp, 16)
    monkeypatch.setattr(config, "available_memory_bytes", lambda: 10 * 2**30)
    cfg = ServerConfig(ctx_size=4096, max_batch=64)
    one, two = kv_blocks_for(cfg, hp, 4 * 2**30), kv_blocks_for(cfg, hp, 4 * 2**30, copies=2)
    assert one == int(6 * 2**30 * 0.5 // per_block)  # half of what the one copy leaves
    assert two == int(2 * 2**30 * 0.5 // (2 * per_block))  # two copies of weights and of the cache


# ---- bad configurations: a clear error or a logged fallback, never a crash ----

def test_fewer_cpus_than_nodes(tmp_path, caplog):
    """Four OS nodes but CPUs on two of them (taskset, cgroups) or one thread: the nodes the threads
    are on, nothing else; forcing more nodes than threads is an error naming the fix."""
    root = make_sysfs(tmp_path, {i: (f"{4 * i}-{4 * i + 3}", 1 << 20) for i in range(4)} | {4: ("", 1 << 20)})
    t = topo(root, [0, 1, 8, 9])
    assert t.mode == "tp" and [n.mem_node for n in t.nodes] == [0, 2]
    assert topo(root, [0, 1, 8, 9], threads=1, numa="tp").nodes[0].cpus == (0,)
    with caplog.at_level(logging.WARNING):
        t = topo(root, [0, 1], numa="replicate")
    assert t.mode == "replicate" and len(t.nodes) == 1 and "one lane" in caplog.text
    for mode in ("tp", "replicate"):
        with pytest.raises(ValueError, match="every node needs at least one"):
            topo(root, [0, 1], {"SYSINFER_NUMA_NODES": "4"}, numa=mode)


def _load_on_made_up_sysfs(monkeypatch, root, numa="tp"):
    import functools

    from sysinfer.model import native_model

    monkeypatch.setattr(native_model, "detect_topology",
                        functools.partial(detect_topology, sysfs_root=root, allowed=[0, 1], env={}))
    return native_model.load_model(tiny_model("llama"), threads=2, numa=numa, n_ctx=256, kv_blocks=16)


def test_node_without_memory_loads_and_runs(tmp_path, monkeypatch, caplog):
    """Node 1 has CPUs but no memory (made-up sysfs): its share is placed by the kernel, logged."""
    root = make_sysfs(tmp_path, {0: ("0", 1 << 20), 1: ("1", 0)})
    with caplog.at_level(logging.WARNING):
        m = _load_on_made_up_sysfs(monkeypatch, root)
    assert "OS node 1 has no memory" in caplog.text
    assert [r["binding"] for r in m.node_report()] == ["bound", "not bound"]
    prompt = prompt_tokens(m.n_vocab)
    assert native_greedy(m, prompt, 8) == native_greedy(numa_model("llama", 1), prompt, 8)


def test_node_the_kernel_lacks_is_a_logged_fallback(tmp_path, monkeypatch, caplog):
    """sysfs names a node 7 the running kernel doesn't have (here: one node): mbind fails, the kernel
    places the pages, the load says so, and the model runs."""
    root = make_sysfs(tmp_path, {0: ("0", 1 << 20), 7: ("1", 1 << 20)})
    if any(n.id == 7 for n in read_os_nodes()):
        pytest.skip("this kernel has a node 7")
    with caplog.at_level(logging.WARNING):
        m = _load_on_made_up_sysfs(monkeypatch, root, numa="replicate")
    assert "binding memory to its NUMA node failed for node(s) 0 (OS node 7)" in caplog.text
    assert [r["binding"] for r in m.node_report()] == ["bound", "failed"]
    prompt = prompt_tokens(m.n_vocab)
    want = native_greedy(numa_model("llama", 1), prompt, 8)
    assert all(native_greedy(r, prompt, 8) == want for r in m.replicas)
