"""`sysinfer info` and `sysinfer synth` as a user runs them (the installed console script)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from support.model_files import smollm2_q4_1, tiny_model
from sysinfer import native_info
from sysinfer.model.model_file import read_model_file


def run_cli(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("sysinfer")
    assert exe, "the sysinfer console script is not installed"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300)


def fields(text: str) -> dict[str, str]:
    return dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in text.splitlines() if line.strip())


def test_info_on_bundled_smollm2():
    out = run_cli("info")
    assert out.returncode == 0, out.stderr
    info = fields(out.stdout)
    assert info["file"] == smollm2_q4_1()
    assert info["architecture"] == "llama"
    assert info["parameters"] == "134.5 M"
    assert info["tensor types"] == "F32 x61, Q4_1 x210, Q8_0 x1"
    assert info["context length"] == "8192"
    assert info["tokenizer"] == "gpt2 (pre: smollm)"
    assert info["output"] == "tied to token_embd"
    assert info["kernels"].startswith(native_info()["kernels"] + " ")


def test_info_on_alibi_baichuan():
    out = run_cli("info", tiny_model("baichuan-alibi"))
    assert out.returncode == 0, out.stderr
    info = fields(out.stdout)
    assert info["architecture"] == "baichuan (ALiBi)" and info["layers"] == "40"


def test_info_on_bad_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a model at all")
    out = run_cli("info", str(bad))
    assert out.returncode == 2
    assert "not a GGUF file" in out.stderr and "Traceback" not in out.stderr


def test_synth_writes_a_loadable_shape(tmp_path):
    path = tmp_path / "smol.gguf"
    out = run_cli("synth", "--like", "smollm2-135m", "-o", str(path))
    assert out.returncode == 0, out.stderr
    real, synth = read_model_file(smollm2_q4_1()), read_model_file(str(path))
    assert synth.hparams.n_layer == real.hparams.n_layer and synth.hparams.n_vocab == real.hparams.n_vocab
    assert {n: t.shape for n, t in synth.tensors.items()} == {n: t.shape for n, t in real.tensors.items()}
    # and the real file's types (it wrote Q4_0 matrices while the README promised "exact types")
    assert {n: t.type for n, t in synth.tensors.items()} == {n: t.type for n, t in real.tensors.items()}
    assert "Q4_1 matrices, Q8_0 embeddings, output tied to the embeddings" in out.stdout


def test_synth_type_q4_k_m_writes_llamacpps_mix(tmp_path):
    """`synth --type q4_k_m`: SmolLM2's shape in the types llama-quantize gives its Q4_K_M file (the
    same tensor for tensor: tests/native/test_synth_mix.py, where that file is present): 576-wide rows
    fall back to Q5_0, Q6_K ffn_down on the first layers (Q4_K on layer 3), tied embeddings Q6_K -> Q8_0."""
    path = tmp_path / "smol.gguf"
    out = run_cli("synth", "--like", "smollm2-135m", "--type", "q4_k_m", "-o", str(path))
    assert out.returncode == 0, out.stderr
    types = {n: t.type.name for n, t in read_model_file(str(path)).tensors.items()}
    assert types["blk.0.attn_q.weight"] == "Q5_0" and types["blk.0.attn_v.weight"] == "Q8_0"
    assert types["blk.0.ffn_down.weight"] == "Q6_K" and types["blk.3.ffn_down.weight"] == "Q4_K"
    assert types["token_embd.weight"] == "Q8_0"
    assert "Q4_K matrices, attn_v by layer, ffn_down by layer" in out.stdout


def test_info_names_no_generic_type_on_a_simd_table():
    """A file with Q5_0, Q5_1, IQ4_NL and BF16 tensors: on a SIMD table (avx2 here, neon on ARM) every
    type has its own kernel, so `info` adds no "generic kernel" note (BF16 was the last type it named);
    on the generic table (a CPU with no SIMD table) nothing is slower than anything else."""
    out = run_cli("info", tiny_model("llama-q5"))
    assert out.returncode == 0, out.stderr
    types = fields(out.stdout)["tensor types"]
    assert "BF16" in types and "Q5_0" in types, types
    assert "generic kernel" not in types, types
    assert native_info()["generic_types"] == []


def test_info_memory_plan_equals_the_tensor_table():
    """`info`'s memory rows and its NUMA plan on a tiny qwen3moe split over 3 forced nodes, against sums
    over the file's tensor table as gguf-py reads it: weights are every tensor; a decode token reads
    all but the unread embedding rows and k/E of the experts; KV is K and V of every layer in fp16; the
    nodes' weights add up to the split tensors (attention, experts, output), each node's line as planned."""
    from gguf import GGUFReader

    from sysinfer.model.memory_plan import memory_plan, size
    from sysinfer.topology import plan_shares

    path = tiny_model("qwen3moe")
    table = {t.name: int(t.n_bytes) for t in GGUFReader(path).tensors}
    mf = read_model_file(path)
    hp = mf.hparams
    experts = sum(b for name, b in table.items() if name.endswith(("_exps.weight")))
    embd_unread = table["token_embd.weight"] * (hp.n_vocab - 1) // hp.n_vocab
    read = sum(table.values()) - embd_unread - experts + experts * hp.n_expert_used // hp.n_expert
    kv = 2 * hp.n_layer * hp.n_head_kv * hp.head_dim * 2
    plan = memory_plan(mf)
    assert (plan.weight_bytes, plan.expert_bytes, plan.token_read_bytes, plan.kv_bytes_per_token) == (
        sum(table.values()), experts, read, kv)
    assert 0 < experts * hp.n_expert_used // hp.n_expert < read < plan.weight_bytes

    out = subprocess.run([shutil.which("sysinfer"), "info", tiny_model("qwen3moe"), "--threads", "3", "--numa", "tp"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "SYSINFER_NUMA_NODES": "3"})
    assert out.returncode == 0, out.stderr
    info = fields(out.stdout)
    assert info["memory"].startswith(f"weights {size(sum(table.values()))}; KV {kv / 1024:.1f} KiB per token")
    assert info["read per token"] == (f"{size(read)} ({hp.n_expert_used} of {hp.n_expert} experts: "
                                      f"{size(experts * hp.n_expert_used // hp.n_expert)} of their {size(experts)})")
    assert info["fits here"].startswith("the machine ")
    split = [n for n in table if n.split(".")[-2] in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate_exps",
                                                      "ffn_up_exps", "ffn_down_exps", "output")]
    shares = plan_shares(hp, {n: int(t.type) for n, t in mf.tensors.items()}, 3, 16)
    assert sum(s.weight_bytes for s in shares) == sum(table[n] for n in split)
    assert all(s.ff1 > s.ff0 for s in shares)  # every node holds its columns of every expert
    for i, s in enumerate(shares):
        assert f"weights {s.weight_bytes / 2**20:.1f} MiB, KV {s.kv_bytes_per_block / 1024:.1f} KiB per block" in info[f"plan node {i}"]
        assert s.kv_bytes_per_block == 2 * hp.n_layer * (s.kv1 - s.kv0) * hp.head_dim * 16 * 2


def test_qwen3_presets_carry_qwen3s_real_vocabulary_and_template():
    """`synth --like qwen3-8b` wrote a placeholder vocabulary (`pre: default`, no chat template), unlike
    the real file and unlike qwen3-30b-a3b's preset; now both carry Qwen3's tokenizer keys."""
    from sysinfer.model.synth_presets import synth_spec, vocabulary_metadata

    for name in ("qwen3-8b", "qwen3-30b-a3b"):
        spec = synth_spec(name)
        meta = vocabulary_metadata(name, spec)
        assert meta["tokenizer.ggml.pre"] == "qwen2" and len(meta["tokenizer.ggml.tokens"]) == spec.n_vocab == 151936
        assert "enable_thinking" in meta["tokenizer.chat_template"]
    assert vocabulary_metadata("qwen2.5-7b", synth_spec("qwen2.5-7b")) == {}  # placeholder: see docs/models.md
