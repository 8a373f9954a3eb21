// Plain NEON kernel table (armv8-a): for aarch64 CPUs without the dot-product extension.
#define SYSINFER_NEON_NS neon_plain
#define SYSINFER_NEON_DOTPROD 0
#include "kernels_neon_impl.h"

namespace sysinfer {
namespace {
const Kernels kNeon = {"neon", neon_plain::quantize_act, neon_plain::gemm, neon_plain::attn_scores,
                       neon_plain::attn_accum, neon_plain::f16_to_f32, neon_plain::f32_to_f16};
}  // namespace
const Kernels* neon_kernels() { return &kNeon; }
}  // namespace sysinfer
