// AVX2 + FMA + F16C kernel table (this file is compiled with -mavx2 -mfma -mf16c; the table is
// chosen at run time only on CPUs that have all three). Its arithmetic is kernels_avx2_impl.h and
// kernels_avx2_quants.h (Q5_0, Q5_1, Q4_K, Q5_K, IQ4_NL, IQ4_XS, Q2_K, Q3_K); the other types run the generic kernel.
#include "kernels_avx2_impl.h"
#include "kernels_avx2_quants.h"

namespace sysinfer {
namespace {

constexpr Kernels kAvx2 = simd::table<GemmQ4_0, GemmQ4_1, GemmQ8_0, GemmQ6_K, GemmFloat, Attention, GemmQ5_0, GemmQ5_1,
                                          GemmQ4_K, GemmQ5_K, GemmIQ4_NL, GemmIQ4_XS, GemmQ2_K, GemmQ3_K>(
    "avx2", quantize_act, f16_to_f32, f32_to_f16);

}  // namespace

const Kernels* avx2_kernels() { return &kAvx2; }

}  // namespace sysinfer
