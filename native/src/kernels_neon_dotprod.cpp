// NEON kernel table with `sdot` (armv8.2-a+dotprod: Kunpeng 920 and later).
#define SYSINFER_NEON_NS neon_dot
#define SYSINFER_NEON_DOTPROD 1
#include "kernels_neon_impl.h"

namespace sysinfer {
namespace {
const Kernels kNeonDot = {"neon-dotprod", neon_dot::quantize_act, neon_dot::gemm, neon_dot::attn_scores,
                          neon_dot::attn_accum, neon_dot::f16_to_f32, neon_dot::f32_to_f16};
}  // namespace
const Kernels* neon_dotprod_kernels() { return &kNeonDot; }
}  // namespace sysinfer
