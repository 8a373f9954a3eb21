"""`sysinfer info` and `sysinfer synth` as a user runs them (the installed console script)."""

from __future__ import annotations

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
