"""RoPE scaling from a file's `rope.scaling.*` keys: YaRN, as Qwen2.5 / Qwen3 long-context files ask
for it (llama.cpp's converter writes `rope.scaling.type = yarn`, `.factor`,
`.original_context_length`, and sometimes `.attn_factor`). Every other scaling type is refused.

YaRN (Peng et al., 2023) mixes each RoPE frequency between its original value ("extrapolation")
and the value divided by `factor` ("interpolation"): the fast frequencies, which turn more than
beta_fast = 32 times over the original context, keep theirs; the slow ones, turning less than
beta_slow = 1 time, are interpolated; a linear ramp joins the two over the pair indices between.
The attention's logits are then scaled up by mscale = 0.1 ln(factor) + 1 (applied to cos and sin,
so to both q and k), times the file's attn_factor. These are llama.cpp's constants and formulas
(its ext_factor is 1 for YaRN files); the native core takes the result as one multiplier per
frequency and one mscale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .gguf_header import describe

YARN_BETA_FAST = 32.0
YARN_BETA_SLOW = 1.0


@dataclass(frozen=True)
class Yarn:
    factor: float            # context extension factor (rope.scaling.factor)
    original_context: int    # training context before the extension (rope.scaling.original_context_length)
    attn_factor: float = 1.0 # rope.scaling.attn_factor


def _number(meta: dict[str, Any], key: str, default: float | None, low: float, high: float) -> float:
    if key not in meta:
        if default is None:
            raise KeyError(f"missing metadata key {key!r} (needed by YaRN RoPE scaling)")
        return default
    value = meta[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and low < value < high):
        raise ValueError(f"metadata key {key!r} = {describe(value)} is out of range ({low:g} to {high:g}, exclusive)")
    return float(value)


def rope_scaling_from_metadata(meta: dict[str, Any], arch: str, n_ctx_train: int) -> Yarn | None:
    """The file's RoPE scaling: None (no scaling) or YaRN's parameters; any other type is an error."""
    key = f"{arch}.rope.scaling.type"
    kind = meta.get(key, "none")
    if kind == "none":
        return None
    if kind != "yarn":
        raise ValueError(f"metadata key {key!r} = {describe(kind)}: only YaRN RoPE scaling ('yarn') is supported; "
                         "use a file without it (the model's native context length needs none)")
    log_mul = meta.get(f"{arch}.rope.scaling.yarn_log_multiplier", 0.0)
    if log_mul not in (0, 0.0):  # DeepSeek-V2's variant of the magnitude correction
        raise ValueError(f"metadata key '{arch}.rope.scaling.yarn_log_multiplier' = {describe(log_mul)}: "
                         "YaRN with a log multiplier is not supported")
    factor = _number(meta, f"{arch}.rope.scaling.factor", None, 0.0, 1e6)
    original = _number(meta, f"{arch}.rope.scaling.original_context_length", float(n_ctx_train), 0.0, 2.0**31)
    attn = _number(meta, f"{arch}.rope.scaling.attn_factor", 1.0, 0.0, 1e6)
    return Yarn(factor=factor, original_context=int(original), attn_factor=attn)


def yarn_frequency_multipliers(yarn: Yarn, rope_dim: int, base: float) -> tuple[list[float], float]:
    """(multiplier of each of the rope_dim / 2 frequencies, mscale of cos and sin)."""
    def corr_dim(rotations: float) -> float:  # the pair index whose frequency turns `rotations` times
        return rope_dim * math.log(yarn.original_context / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(0.0, math.floor(corr_dim(YARN_BETA_FAST)))
    high = min(rope_dim - 1.0, math.ceil(corr_dim(YARN_BETA_SLOW)))
    scale = 1.0 / yarn.factor  # interpolation: the frequency divided by the factor
    out = []
    for i in range(rope_dim // 2):
        ramp = 1.0 - min(1.0, max(0.0, (i - low) / max(0.001, high - low)))  # 1: keep (extrapolate), 0: interpolate
        out.append(scale * (1.0 - ramp) + ramp)
    mscale = (1.0 + 0.1 * math.log(yarn.factor) if yarn.factor > 1.0 else 1.0) * yarn.attn_factor
    return out, mscale
