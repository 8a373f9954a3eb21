"""The native core's typed description of a model (native/src/model_desc.h): every tensor by its
role, type and shape, and the graph's switches (norm, positions, RoPE style). Built from validated
hyperparameters and the file's tensors; the native core checks it again and packs the weights by
role, so no tensor names cross into C++."""

from __future__ import annotations

from .. import _native
from .architecture import ModelHParams, layer_tensor_shapes
from .model_file import GGUFModelFile

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
