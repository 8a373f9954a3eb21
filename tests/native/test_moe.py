"""Qwen3-MoE (issue 24): the routed experts of the native core against the numpy reference
(test_forward runs the tiny qwen3moe's prefill and greedy decode; test_numa its node splits), and
what grouping rows by expert must not change: a row's logits never depend on its batch-mates, though
they change which experts a step runs and how many rows each expert's GEMM takes."""

from __future__ import annotations

import numpy as np
import pytest

from support.model_files import TINY_SPECS, tiny_model
from support.reference_forward import ReferenceModel
from sysinfer import _native
from sysinfer.model.description import describe
from sysinfer.model.model_file import read_model_file

Role = _native.Role


def _blocks(model, lengths):
    tables, nxt = [], 0
    for n in lengths:
        nb = -(-n // model.block_size)
        tables.append(list(range(nxt, nxt + nb)))
        nxt += nb
    width = max(len(t) for t in tables)
    return np.array([t + [-1] * (width - len(t)) for t in tables], dtype=np.int32)


def test_rows_do_not_depend_on_batch_mates(load):
    """4 sequences (prefill and one-token steps) in one step = each alone, bit for bit: every row of
    the batch, not only the last of each sequence."""
    model = load(tiny_model("qwen3moe"))
    rng = np.random.default_rng(5)
    lengths = [29, 1, 12, 3]
    seqs = [rng.integers(3, model.n_vocab, size=n).tolist() for n in lengths]
    alone = []
    for s in seqs:
        table = _blocks(model, [len(s)])
        alone.append(model.step(s, np.arange(len(s)), [0, len(s)], table, [len(s)], np.arange(len(s))).copy())
    starts = np.cumsum([0] + lengths)
    batched = model.step(sum(seqs, []), np.concatenate([np.arange(n) for n in lengths]), starts,
                         _blocks(model, lengths), lengths, np.arange(starts[-1])).copy()
    np.testing.assert_array_equal(batched, np.concatenate(alone))


def test_decode_steps_equal_prefill_rows(load):
    """Decoding a sequence one token at a time (each step runs only its token's experts) gives the
    logits its prefill gave every position (the rows then shared the experts' GEMMs)."""
    model = load(tiny_model("qwen3moe"))
    tokens = np.random.default_rng(11).integers(3, model.n_vocab, size=20).tolist()
    table = _blocks(model, [len(tokens)])
    prefill = model.step(tokens, np.arange(20), [0, 20], table, [20], np.arange(20)).copy()
    model.step(tokens[:8], np.arange(8), [0, 8], table, [8], [7])
    for pos in range(8, 20):
        row = model.step([tokens[pos]], [pos], [0, 1], table, [pos + 1], [0])[0]
        np.testing.assert_allclose(row, prefill[pos], rtol=0, atol=1e-4)


def test_expert_counts(load):
    """Model.moe_counts (what benchmarks/rows_cost.py reports): a one-token step routes each layer once
    to exactly k experts; 12 different tokens choose more of them, at most all, and the layers of a
    step are counted once each."""
    model = load(tiny_model("qwen3moe"))
    hp = model.hparams
    table = _blocks(model, [13])
    steps0, chosen0 = model.native.moe_counts
    model.step([7], [0], [0, 1], table, [1], [0])
    steps1, chosen1 = model.native.moe_counts
    assert (steps1 - steps0, chosen1 - chosen0) == (hp.n_layer, hp.n_layer * hp.n_expert_used)
    tokens = np.random.default_rng(2).integers(3, model.n_vocab, size=12).tolist()
    model.step(tokens, np.arange(1, 13), [0, 12], table, [13], [11])
    steps2, chosen2 = model.native.moe_counts
    assert steps2 - steps1 == hp.n_layer
    assert hp.n_layer * hp.n_expert_used < chosen2 - chosen1 <= hp.n_layer * hp.n_expert


def test_reference_routes_as_qwen3moe():
    """The reference's routing itself: softmax, the top n_expert_used, renormalised weights."""
    ref = ReferenceModel(tiny_model("qwen3moe"))
    hp = ref.hp
    assert (hp.n_expert, hp.n_expert_used, hp.n_ff) == (16, 4, 128)
    h = np.random.default_rng(0).standard_normal((3, hp.n_embd)).astype(np.float32)
    out = ref.moe(h, "blk.0.")
    # The same by hand for row 0: experts picked by the router's logits (softmax is monotonic).
    logits = ref.matmul(h[:1], "blk.0.ffn_gate_inp.weight")[0].astype(np.float64)
    top = np.argsort(-logits, kind="stable")[:4]
    w = np.exp(logits[top] - logits.max())
    w /= w.sum()
    expect = np.zeros(hp.n_embd)
    for e, wt in zip(top, w):
        g = ref.expert_matmul(h[:1], "blk.0.ffn_gate_exps.weight", e)
        u = ref.expert_matmul(h[:1], "blk.0.ffn_up_exps.weight", e)
        expect += wt * ref.expert_matmul(g / (1 + np.exp(-g)) * u, "blk.0.ffn_down_exps.weight", e)[0]
    np.testing.assert_allclose(out[0], expect, rtol=1e-5, atol=1e-6)


def test_description_of_experts_and_its_errors():
    mf = read_model_file(tiny_model("qwen3moe"))
    desc, _ = describe(mf, n_ctx=256)
    assert desc.ffn == _native.FfnKind.MOE and (desc.n_expert, desc.n_expert_used, desc.n_ff) == (16, 4, 128)
    roles = {(t.layer, t.role) for t in desc.tensors}
    assert {(1, Role.FFN_GATE_INP), (1, Role.FFN_GATE_EXPS), (1, Role.FFN_UP_EXPS), (1, Role.FFN_DOWN_EXPS)} <= roles
    assert (1, Role.FFN_GATE) not in roles
    desc.check()
    desc.tensors = [t for t in desc.tensors if (t.layer, t.role) != (1, Role.FFN_UP_EXPS)]
    with pytest.raises(ValueError, match=r"missing blk\.1\.ffn_up_exps"):
        desc.check()
    desc, _ = describe(mf, n_ctx=256)
    desc.n_expert_used = 17
    with pytest.raises(ValueError, match=r"0 < n_expert_used <= n_expert \(got 17 of 16\)"):
        desc.check()


def test_expert_counts_are_checked_at_load(tmp_path):
    from sysinfer.model.synth import SynthSpec, write_synthetic_gguf

    spec = SynthSpec(**{**TINY_SPECS["qwen3moe"].__dict__, "n_expert_used": 4, "n_layer": 1})
    path = write_synthetic_gguf(str(tmp_path / "m.gguf"), spec)
    from gguf import GGUFReader  # noqa: F401  (the file is valid; now break its expert count)
    from sysinfer.model.architecture import hparams_from_metadata
    from sysinfer.model.gguf_header import read_gguf_header

    meta = dict(read_gguf_header(path))
    meta["qwen3moe.expert_used_count"] = 32
    with pytest.raises(ValueError, match=r"qwen3moe\.expert_used_count \(32\) exceeds expert_count \(16\)"):
        hparams_from_metadata(meta)
    del meta["qwen3moe.expert_count"]
    with pytest.raises(KeyError, match="qwen3moe.expert_count"):
        hparams_from_metadata(meta)


def test_node_plan_counts_every_expert():
    """The NUMA plan's weight bytes (sysinfer info's memory plan) hold every expert's gate, up and down
    slices: one node holds all the layer matrices (the router, token_embd and vectors aside) and the
    output; two nodes split them evenly."""
    from sysinfer.topology import plan_shares

    mf = read_model_file(tiny_model("qwen3moe"))
    types = {name: int(t.type) for name, t in mf.tensors.items()}
    matrices = sum(t.data.nbytes for name, t in mf.tensors.items()
                   if name.startswith("blk.") and len(t.shape) >= 2 and "gate_inp" not in name)
    (one,) = plan_shares(mf.hparams, types, 1)
    assert one.weight_bytes == matrices + mf.tensors["output.weight"].data.nbytes
    two = plan_shares(mf.hparams, types, 2)
    assert sum(s.weight_bytes for s in two) == one.weight_bytes and (two[0].ff0, two[0].ff1) == (0, 64)
