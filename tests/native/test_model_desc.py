"""The typed model description (native/src/model_desc.h, sysinfer/model/description.py): what the
native core is told about a model, and what it refuses."""

from __future__ import annotations

import pytest

from support.model_files import tiny_model
from sysinfer import _native
from sysinfer.model.description import describe
from sysinfer.model.model_file import read_model_file

Role = _native.Role


def tiny_description(kind: str = "llama"):
    mf = read_model_file(tiny_model(kind))
    return mf, *describe(mf, n_ctx=256)


def one_node(desc) -> list[dict]:
    return [dict(threads=1, cpus=[], mem_node=-1, kv_heads=[0, desc.n_head_kv], ff=[0, desc.n_ff], vocab=[0, desc.n_vocab])]


def test_description_names_every_tensor_by_role():
    mf, desc, names = tiny_description("llama")
    desc.check()
    roles = {(t.layer, t.role) for t in desc.tensors}
    assert (-1, Role.TOKEN_EMBD) in roles and (-1, Role.OUTPUT) in roles and (-1, Role.ROPE_FREQS) in roles
    for layer in range(desc.n_layer):
        for role in (Role.ATTN_NORM, Role.ATTN_Q, Role.ATTN_K, Role.ATTN_V, Role.ATTN_OUTPUT, Role.FFN_NORM,
                     Role.FFN_GATE, Role.FFN_UP, Role.FFN_DOWN):
            assert (layer, role) in roles
    for t, name in zip(desc.tensors, names):
        assert t.type == int(mf.tensors[name].type) and list(t.shape) == list(mf.tensors[name].shape)
    assert desc.rope_style == _native.RopeStyle.PAIRS and desc.positions == _native.Positions.ROPE


def test_alibi_model_has_no_rope():
    _, desc, _ = tiny_description("baichuan-alibi")
    assert desc.positions == _native.Positions.ALIBI
    assert not any(t.role == Role.ROPE_FREQS for t in desc.tensors)


def drop(desc, layer, role):
    desc.tensors = [t for t in desc.tensors if (t.layer, t.role) != (layer, role)]
    return desc


def test_missing_wrong_and_unsupported_tensors_are_named():
    _, desc, _ = tiny_description()
    with pytest.raises(ValueError, match=r"missing blk\.1\.attn_q"):
        drop(desc, 1, Role.ATTN_Q).check()
    _, desc, _ = tiny_description()
    desc.tensors = [t if (t.layer, t.role) != (0, Role.FFN_UP) else _native.TensorDesc(Role.FFN_UP, 0, t.type, [256, 256])
                    for t in desc.tensors]
    with pytest.raises(ValueError, match=r"blk\.0\.ffn_up has shape \[256, 256\], expected \[256, 512\]"):
        desc.check()
    _, desc, _ = tiny_description()
    desc.tensors = desc.tensors + [desc.tensors[-1]]
    with pytest.raises(ValueError, match="given twice"):
        desc.check()
    _, desc, _ = tiny_description()
    desc.n_expert = 4
    desc.tensors = desc.tensors + [_native.TensorDesc(Role.FFN_GATE_EXPS, 0, 2, [256, 512, 4])]
    with pytest.raises(ValueError, match=r"blk\.0\.ffn_gate_exps: a dense feed-forward has no such tensor"):
        _native.Model(desc, one_node(desc))


def test_roles_are_enums_not_names():
    with pytest.raises(TypeError):
        _native.TensorDesc("attn_q", 0, 2, [256, 256])


def test_load_checks_sizes_and_completeness():
    mf, desc, names = tiny_description()
    model = _native.Model(desc, one_node(desc))
    index = model.layer_tensors(-1)
    data = [mf.tensors[names[i]].raw_bytes() for i in index]
    with pytest.raises(ValueError, match="expected .* bytes"):
        model.load(-1, [d[:1] for d in data])
    with pytest.raises(ValueError, match="tensors, got"):
        model.load(-1, data[:-1])
    model.load(-1, data)
    with pytest.raises(ValueError, match="loaded twice"):
        model.load(-1, data)
    with pytest.raises(ValueError, match="layer 0 not loaded"):
        model.finish_loading()


# ---- Qwen (issue 24): what their files add, and what they are refused for ----

def test_qwen_descriptions_carry_their_extra_tensors():
    _, desc, _ = tiny_description("qwen2")
    roles = {(t.layer, t.role) for t in desc.tensors}
    assert {(1, Role.ATTN_Q_BIAS), (1, Role.ATTN_K_BIAS), (1, Role.ATTN_V_BIAS)} <= roles
    assert (-1, Role.OUTPUT) not in roles  # tied to token_embd
    assert desc.rope_style == _native.RopeStyle.HALVES
    _, desc, _ = tiny_description("qwen3")
    roles = {(t.layer, t.role) for t in desc.tensors}
    assert {(0, Role.ATTN_Q_NORM), (0, Role.ATTN_K_NORM)} <= roles and (0, Role.ATTN_Q_BIAS) not in roles
    assert desc.head_dim == 64 and desc.n_embd // desc.n_head == 32 and desc.rope_dim == 64


def qwen_metadata(kind: str) -> dict:
    from sysinfer.model.gguf_header import read_gguf_header

    return dict(read_gguf_header(tiny_model(kind)))


def test_qwen3_value_length_must_equal_key_length():
    from sysinfer.model.architecture import hparams_from_metadata

    meta = qwen_metadata("qwen3")
    meta["qwen3.attention.value_length"] = 32
    with pytest.raises(ValueError, match=r"qwen3\.attention\.value_length \(32\) differs"):
        hparams_from_metadata(meta)


def test_rope_scaling_other_than_yarn_is_a_clear_load_error():
    from sysinfer.model.architecture import hparams_from_metadata

    meta = qwen_metadata("qwen2")
    meta["qwen2.rope.scaling.type"] = "linear"
    with pytest.raises(ValueError, match=r"'qwen2\.rope\.scaling\.type' = 'linear': only YaRN RoPE scaling"):
        hparams_from_metadata(meta)
    meta["qwen2.rope.scaling.type"] = "yarn"  # YaRN needs its factor
    with pytest.raises(KeyError, match=r"qwen2\.rope\.scaling\.factor"):
        hparams_from_metadata(meta)
    meta["qwen2.rope.scaling.factor"] = -2.0
    with pytest.raises(ValueError, match=r"'qwen2\.rope\.scaling\.factor' = -2\.0 is out of range"):
        hparams_from_metadata(meta)
    meta["qwen2.rope.scaling.factor"] = 4.0
    meta["qwen2.rope.scaling.yarn_log_multiplier"] = 0.1
    with pytest.raises(ValueError, match="yarn_log_multiplier"):
        hparams_from_metadata(meta)
    del meta["qwen2.rope.scaling.yarn_log_multiplier"]
    assert hparams_from_metadata(meta).yarn.factor == 4.0
    meta["qwen2.rope.scaling.type"] = "none"
    assert hparams_from_metadata(meta).qkv_bias and hparams_from_metadata(meta).yarn is None


def test_qwen2_file_without_a_bias_is_refused():
    from sysinfer.model.model_file import ModelLoadError, check_tensors

    mf = read_model_file(tiny_model("qwen2"))
    del mf.tensors["blk.1.attn_k.bias"]
    with pytest.raises(ModelLoadError, match=r"missing tensor 'blk\.1\.attn_k\.bias'"):
        check_tensors(mf.tensors, mf.hparams, mf.path)


# ---- YaRN RoPE scaling (Qwen2.5 / Qwen3 long-context files) ----

def _yarn_file(factor: float, original: int, attn_factor: float | None = None) -> str:
    from support.model_files import TINY_SPECS, cache_dir
    from sysinfer.model.synth import SynthSpec, write_synthetic_gguf

    extra = {"qwen3.rope.scaling.type": "yarn", "qwen3.rope.scaling.factor": float(factor),
             "qwen3.rope.scaling.original_context_length": original}
    if attn_factor is not None:
        extra["qwen3.rope.scaling.attn_factor"] = float(attn_factor)
    path = cache_dir() / f"tiny-qwen3-yarn-{factor:g}-{original}-{attn_factor}.gguf"
    if not path.exists():
        spec = SynthSpec(**{**TINY_SPECS["qwen3"].__dict__, "metadata": extra})
        write_synthetic_gguf(str(path.with_suffix(".tmp")), spec, seed=9)
        path.with_suffix(".tmp").rename(path)
    return str(path)


@pytest.mark.parametrize("factor,original,attn_factor", [(4.0, 64, None), (2.5, 200, 1.2)])
def test_yarn_matches_the_reference(load, factor, original, attn_factor):
    """A tiny qwen3 with YaRN keys (the ramp falls inside its 32 frequency pairs) against the float64
    reference of transformers' YaRN formulas, positions past the original context included; the same
    weights without scaling give other logits, so the scaling is really applied."""
    import numpy as np
    from support.reference_forward import ReferenceModel

    path = _yarn_file(factor, original, attn_factor)
    model = load(path, max_out_rows=256)
    ref = ReferenceModel(path)
    desc = describe(read_model_file(path), 256)[0]
    mul, mscale = list(desc.rope_freq_mul), desc.rope_mscale
    assert 1 / factor - 1e-6 < min(mul) and max(mul) == pytest.approx(1.0) and min(mul) < 1.0
    assert mscale == pytest.approx((0.1 * np.log(factor) + 1) * (attn_factor or 1.0), rel=1e-6)
    tokens = np.random.default_rng(4).integers(3, model.n_vocab, size=160).tolist()
    n = len(tokens)
    table = np.arange(-(-n // model.block_size), dtype=np.int32)[None, :]
    native = model.step(tokens, np.arange(n), [0, n], table, [n], np.arange(n)).copy()
    expected = ref.forward(tokens)
    rel = float(np.sqrt(np.mean((native - expected) ** 2)) / expected.std())
    assert rel < 1e-2, rel  # test_forward's qwen3 tolerance (FLIP_SENSITIVE)
    ref.hp = ref.hp.__class__(**{**ref.hp.__dict__, "yarn": None})
    unscaled = ref.forward(tokens)
    assert float(np.sqrt(np.mean((unscaled - expected) ** 2)) / expected.std()) > 10 * rel
