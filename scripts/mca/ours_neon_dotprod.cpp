// The inner loops of sysinfer's neon-dotprod Q4_0 and Q4_K GEMV and GEMM, each as one extern "C"
// function that runs exactly one of the skeleton's walks (native/src/kernels_simd.h) over the
// table's arithmetic (kernels_neon_impl.h, kernels_neon_quants.h), so scripts/mca_table.py finds that
// walk's block loop in the compiled assembly and hands it to llvm-mca. Not part of the product: it
// is compiled only by that script, for aarch64, with the flags CMake gives kernels_neon_dotprod.cpp.
#define SYSINFER_NEON_DOTPROD 1
#include "kernels_neon_impl.h"

namespace sysinfer {
namespace {

// Decode: few_rows<Op, 1> walks kGemvStreams tiles side by side with prefetch (rows_tiles -> this).
template <class Op>
void gemv(const void* w, int n_blocks, const ActBlock* x, float* y) {
  simd::rows_lockstep<Op, simd::kGemvStreams, 1, true>(static_cast<const typename Op::Tile*>(w), n_blocks, x,
                                                       size_t(n_blocks) * simd::act_blocks<typename Op::Tile>, y,
                                                       ROW_TILE * simd::kGemvStreams);
}

// Prefill: gemm_quantized walks each tile for kTokTile tokens at a time (tile_tokens).
template <class Op>
void gemm(const void* w, int n_blocks, const ActBlock* x, size_t x_stride, float* y, int ldy) {
  simd::tile_tokens<Op, simd::kTokTile>(static_cast<const typename Op::Tile*>(w), n_blocks, x, x_stride, y, ldy);
}

}  // namespace
}  // namespace sysinfer

using namespace sysinfer;

extern "C" {
void mca_ours_q4_0_gemv(const void* w, int nb, const ActBlock* x, float* y) { gemv<GemmQ4_0>(w, nb, x, y); }
void mca_ours_q4_k_gemv(const void* w, int nb, const ActBlock* x, float* y) { gemv<GemmQ4_K>(w, nb, x, y); }
void mca_ours_q4_0_gemm(const void* w, int nb, const ActBlock* x, size_t xs, float* y, int ldy) {
  gemm<GemmQ4_0>(w, nb, x, xs, y, ldy);
}
void mca_ours_q4_k_gemm(const void* w, int nb, const ActBlock* x, size_t xs, float* y, int ldy) {
  gemm<GemmQ4_K>(w, nb, x, xs, y, ldy);
}
}
