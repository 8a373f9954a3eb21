"""The native core's typed description of a model (native/src/model_desc.h): every tensor by its
role, type and shape, and the graph's switches (norm, positions, RoPE style). Built from validated
hyperparameters and the file's tensors; the native core checks it again and packs the weights by
role, so no tensor names cross into C++."""

from __future__ import annotations

from .. import _native
from .architecture import EncoderHParams, ModelHParams, layer_tensor_shapes
from .model_file import GGUFModelFile
from .rope_scaling import yarn_frequency_multipliers

Role = _native.Role

# GGUF tensor name (after "blk.N." for a layer's) -> its role.
MODEL_ROLES = {
    "token_embd.weight": Role.TOKEN_EMBD,
    "output.weight": Role.OUTPUT,
    "output_norm.weight": Role.OUTPUT_NORM,
    "rope_freqs.weight": Role.ROPE_FREQS,
}
LAYER_ROLES = {
    "attn_norm.weight": Role.ATTN_NORM,
    "attn_q.weight": Role.ATTN_Q,
    "attn_k.weight": Role.ATTN_K,
    "attn_v.weight": Role.ATTN_V,
    "attn_q.bias": Role.ATTN_Q_BIAS,
    "attn_k.bias": Role.ATTN_K_BIAS,
    "attn_v.bias": Role.ATTN_V_BIAS,
    "attn_q_norm.weight": Role.ATTN_Q_NORM,
    "attn_k_norm.weight": Role.ATTN_K_NORM,
    "attn_output.weight": Role.ATTN_OUTPUT,
    "ffn_norm.weight": Role.FFN_NORM,
    "ffn_gate.weight": Role.FFN_GATE,
    "ffn_up.weight": Role.FFN_UP,
    "ffn_down.weight": Role.FFN_DOWN,
    "ffn_gate_inp.weight": Role.FFN_GATE_INP,
    "ffn_gate_exps.weight": Role.FFN_GATE_EXPS,
    "ffn_up_exps.weight": Role.FFN_UP_EXPS,
    "ffn_down_exps.weight": Role.FFN_DOWN_EXPS,
}
_ROPE_STYLES = {"pairs": _native.RopeStyle.PAIRS, "halves": _native.RopeStyle.HALVES}


def hparams_desc(hp: ModelHParams, n_ctx: int) -> _native.ModelDesc:
    """The description's hyperparameters and switches, without tensors."""
    d = _native.ModelDesc()
    d.arch = hp.arch
    for key in ("n_layer", "n_embd", "n_head", "n_head_kv", "head_dim", "n_ff", "n_vocab", "rope_base",
                "alibi_max_bias"):
        setattr(d, key, getattr(hp, key))
    d.n_ctx = n_ctx
    d.norm = _native.NormKind.RMS
    d.norm_eps = hp.rms_eps
    d.positions = _native.Positions.ROPE if hp.use_rope else _native.Positions.ALIBI
    d.rope_style = _ROPE_STYLES[hp.rope_style]
    d.rope_dim = hp.rope_dim
    if hp.yarn is not None and hp.use_rope:
        d.rope_freq_mul, d.rope_mscale = yarn_frequency_multipliers(hp.yarn, hp.rope_dim, hp.rope_base)
    if hp.n_expert:
        d.ffn = _native.FfnKind.MOE
        d.n_expert, d.n_expert_used = hp.n_expert, hp.n_expert_used
    return d


def describe(mf: GGUFModelFile, n_ctx: int) -> tuple[_native.ModelDesc, list[str]]:
    """(description, the GGUF name of each of its tensors in order). Tensors the model does not use
    (a rope_freqs of an ALiBi model, rope caches, anything its architecture does not name) are left
    out."""
    hp = mf.hparams
    desc, names, tensors = hparams_desc(hp, n_ctx), [], []

    def add(name: str, role, layer: int) -> None:
        t = mf.tensors[name]
        tensors.append(_native.TensorDesc(role, layer, int(t.type), list(t.shape)))
        names.append(name)

    for name, role in MODEL_ROLES.items():
        if name in mf.tensors and not (role == Role.ROPE_FREQS and not hp.use_rope):
            add(name, role, -1)
    for i in range(hp.n_layer):
        for name in layer_tensor_shapes(hp, i):  # what the architecture has (validated by model_file)
            add(name, LAYER_ROLES[name.split(".", 2)[2]], i)
    desc.tensors = tensors
    return desc, names


# Encoders (llama.cpp's bert): GGUF name -> role.
ENCODER_MODEL_ROLES = {
    "token_embd.weight": Role.TOKEN_EMBD,
    "position_embd.weight": Role.POSITION_EMBD,
    "token_types.weight": Role.TOKEN_TYPES,
    "token_embd_norm.weight": Role.TOKEN_EMBD_NORM,
    "token_embd_norm.bias": Role.TOKEN_EMBD_NORM_BIAS,
    "cls.weight": Role.CLS,
    "cls.bias": Role.CLS_BIAS,
    "cls.output.weight": Role.CLS_OUTPUT,
    "cls.output.bias": Role.CLS_OUTPUT_BIAS,
}
ENCODER_LAYER_ROLES = {
    "attn_q.weight": Role.ATTN_Q,
    "attn_k.weight": Role.ATTN_K,
    "attn_v.weight": Role.ATTN_V,
    "attn_q.bias": Role.ATTN_Q_BIAS,
    "attn_k.bias": Role.ATTN_K_BIAS,
    "attn_v.bias": Role.ATTN_V_BIAS,
    "attn_output.weight": Role.ATTN_OUTPUT,
    "attn_output.bias": Role.ATTN_OUTPUT_BIAS,
    "attn_output_norm.weight": Role.ATTN_OUTPUT_NORM,
    "attn_output_norm.bias": Role.ATTN_OUTPUT_NORM_BIAS,
    "ffn_up.weight": Role.FFN_UP,
    "ffn_up.bias": Role.FFN_UP_BIAS,
    "ffn_down.weight": Role.FFN_DOWN,
    "ffn_down.bias": Role.FFN_DOWN_BIAS,
    "layer_output_norm.weight": Role.LAYER_OUTPUT_NORM,
    "layer_output_norm.bias": Role.LAYER_OUTPUT_NORM_BIAS,
}
_POOLING = {"mean": _native.Pooling.MEAN, "cls": _native.Pooling.CLS, "last": _native.Pooling.LAST,
            "rank": _native.Pooling.RANK}


def describe_encoder(hp: EncoderHParams, tensors: dict, n_cls_out: int) -> tuple[_native.ModelDesc, list[str]]:
    """An encoder's description (LayerNorm, absolute positions, bidirectional attention, GELU, its
    pooling) and the GGUF name of each described tensor. tensors: name -> TensorData, already checked
    against architecture.encoder_tensor_shapes; the rank head is left out unless the pooling is rank."""
    d = _native.ModelDesc()
    d.arch = hp.arch
    for key in ("n_layer", "n_embd", "n_head", "n_head_kv", "head_dim", "n_ff", "n_vocab"):
        setattr(d, key, getattr(hp, key))
    d.n_ctx = hp.n_ctx_train
    d.norm = _native.NormKind.LAYER
    d.norm_eps = hp.norm_eps
    d.positions = _native.Positions.ABSOLUTE
    d.causal = False
    d.ffn = _native.FfnKind.GELU
    d.pooling = _POOLING[hp.pooling]
    d.n_token_types = max(hp.n_token_types, 1)
    d.n_cls_out = n_cls_out
    described, names = [], []

    def add(name: str, role, layer: int) -> None:
        t = tensors[name]
        shape = list(t.shape)
        if role in (Role.TOKEN_TYPES, Role.CLS_OUTPUT) and len(shape) == 1:
            shape.append(1)  # one row, written 1-D by llama-quantize: the same bytes
        described.append(_native.TensorDesc(role, layer, int(t.type), shape))
        names.append(name)

    for name, role in ENCODER_MODEL_ROLES.items():
        if name in tensors and (hp.pooling == "rank" or not name.startswith("cls.")):
            add(name, role, -1)
    for i in range(hp.n_layer):
        for suffix, role in ENCODER_LAYER_ROLES.items():
            if f"blk.{i}.{suffix}" in tensors:
                add(f"blk.{i}.{suffix}", role, i)
    d.tensors = described
    return d, names
