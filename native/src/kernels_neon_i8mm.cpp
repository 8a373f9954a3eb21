// NEON kernel table with `smmla` (Armv8.6 I8MM, an option from Armv8.2: newer Kunpeng, Neoverse N2 /
// V1 / V2, Graviton 3 and 4, Cortex-A710 and later). Chosen at run time by HWCAP2_I8MM
// (cpu_features.cpp); Kunpeng 920 has dotprod but no i8mm and stays on neon-dotprod.
//
// `smmla` multiplies a 2x8 int8 matrix by an 8x2 one into a 2x2 int32 accumulator: 32 multiply-adds,
// where `sdot` does 16. With two weight rows in the first operand and two tokens in the second, a
// tile block (8 rows x 32 columns) against two tokens is 16 `smmla`, against the 32 `sdot` the
// dotprod table spends on the same two tokens. So prefill (several tokens per pass over a tile,
// kernels_simd.h) is where it pays: Q4_0, Q4_1 and Q8_0 take tokens two at a time here (an odd last
// token is paired with itself). Decode (one token) and Q6_K (only the output matrix in real Q4_0
// files) keep the dotprod arithmetic.
//
// The integer row sums `smmla` gives are exact, the same integers `sdot` gives, and the float step
// after them is dotprod's own function (q4_0_scale ...); so this table's results are the dotprod
// table's, bit for bit (native/tests/test_kernels.cpp checks it), and a sequence gets the same logits
// on a Kunpeng 920 and on a newer core.
#define SYSINFER_NEON_DOTPROD 1
#include "kernels_neon_impl.h"

namespace sysinfer {
namespace {

// One tile block as `smmla` weight operands: v[o][p] is rows 2p, 2p+1 (8 bytes each, in that order) of
// columns 8o..8o+7. For Q4, columns are the block's (o = 0, 1: low nibbles, columns 0..15; o = 2, 3:
// high nibbles, columns 16..31), as unsigned nibbles 0..15.
struct MmlaBlock {
  int8x16_t v[4][4];  // [column octet][row pair]
};

// The packed tile interleaves rows in 4-byte groups (kernels.h): 16 bytes of group g at rows 4h..4h+3
// are [row 4h: 4 bytes][row 4h+1][row 4h+2][row 4h+3]. Zipping the 32-bit lanes of groups g and g+1
// gives [row 4h: 8 bytes][row 4h+1: 8 bytes] and [row 4h+2][row 4h+3]: two `smmla` weight operands.
inline void zip_rows(uint8x16_t g0, uint8x16_t g1, uint8x16_t* rows01, uint8x16_t* rows23) {
  const uint32x4_t a = vreinterpretq_u32_u8(g0), b = vreinterpretq_u32_u8(g1);
  *rows01 = vreinterpretq_u8_u32(vzip1q_u32(a, b));
  *rows23 = vreinterpretq_u8_u32(vzip2q_u32(a, b));
}

inline MmlaBlock mmla_q4(const uint8_t (*q)[8][4]) {  // q: a TileQ4_0 / TileQ4_1 block's quants
  const uint8x16_t m4 = vdupq_n_u8(0x0F);
  MmlaBlock w;
  for (int o = 0; o < 2; ++o)    // groups 2o, 2o+1: columns 8o..8o+7 (low) and 16+8o.. (high)
    for (int h = 0; h < 2; ++h) {  // rows 4h..4h+3
      uint8x16_t z[2];
      zip_rows(vld1q_u8(q[2 * o][4 * h]), vld1q_u8(q[2 * o + 1][4 * h]), &z[0], &z[1]);
      for (int p = 0; p < 2; ++p) {
        w.v[o][2 * h + p] = vreinterpretq_s8_u8(vandq_u8(z[p], m4));
        w.v[o + 2][2 * h + p] = vreinterpretq_s8_u8(vshrq_n_u8(z[p], 4));
      }
    }
  return w;
}

inline MmlaBlock mmla_q8(const TileQ8_0& t) {
  MmlaBlock w;
  for (int o = 0; o < 4; ++o)
    for (int h = 0; h < 2; ++h) {
      uint8x16_t z[2];
      zip_rows(vld1q_u8(reinterpret_cast<const uint8_t*>(t.q[2 * o][4 * h])),
               vld1q_u8(reinterpret_cast<const uint8_t*>(t.q[2 * o + 1][4 * h])), &z[0], &z[1]);
      for (int p = 0; p < 2; ++p) w.v[o][2 * h + p] = vreinterpretq_s8_u8(z[p]);
    }
  return w;
}

// Exact row sums of one tile block with two tokens' activation blocks a0, a1:
// s[t][0] = rows 0-3, s[t][1] = rows 4-7 of token t (the integers RowDot / dot4_wide give).
inline void mmla_dot(const MmlaBlock& w, const ActBlock& a0, const ActBlock& a1, int32x4_t s[2][2]) {
  int8x16_t act[4];  // act[o]: [a0 columns 8o..8o+7][a1 the same]: the 8x2 operand, column-major
  for (int o = 0; o < 4; ++o) act[o] = vcombine_s8(vld1_s8(a0.qs + 8 * o), vld1_s8(a1.qs + 8 * o));
  int32x4_t c[4];  // c[p] = [row 2p . a0, row 2p . a1, row 2p+1 . a0, row 2p+1 . a1]
  for (int p = 0; p < 4; ++p) {
    c[p] = vmmlaq_s32(vdupq_n_s32(0), w.v[0][p], act[0]);
    for (int o = 1; o < 4; ++o) c[p] = vmmlaq_s32(c[p], w.v[o][p], act[o]);
  }
  s[0][0] = vuzp1q_s32(c[0], c[1]);  // even lanes: token a0, rows 0..3
  s[1][0] = vuzp2q_s32(c[0], c[1]);  // odd lanes: token a1
  s[0][1] = vuzp1q_s32(c[2], c[3]);
  s[1][1] = vuzp2q_s32(c[2], c[3]);
}

// Tokens i, i+1 of a pass go through one mmla_dot; an odd last token is paired with itself (the same
// instructions as a pair; its twin's sums are dropped). scale(s03, s47, a, acc) is the type's float step.
template <int NT, class Scale>
inline void token_pairs(const MmlaBlock& w, const ActBlock* a, size_t a_stride, TileAcc* acc, const Scale& scale) {
  for (int i = 0; i < NT; i += 2) {
    const ActBlock& a0 = a[i * a_stride];
    const ActBlock& a1 = a[(i + 1 < NT ? i + 1 : i) * a_stride];
    int32x4_t s[2][2];
    mmla_dot(w, a0, a1, s);
    scale(s[0][0], s[0][1], a0, acc[i]);
    if (i + 1 < NT) scale(s[1][0], s[1][1], a1, acc[i + 1]);
  }
}

// Tokens per pass over an unpacked tile block: two `smmla` pairs. (Each pass keeps the 16 weight
// operands and 4 tokens' 8 float accumulators live, about the 32 vector registers there are.)
constexpr int kMmlaTokTile = 4;

struct MmlaQ4_0 : simd::WeightType<TileQ4_0, TileAcc> {
  static constexpr int kTokTile = kMmlaTokTile;
  template <int NT>
  static void block(const Tile& b, const ActBlock* a, size_t a_stride, Acc* acc) {
    if constexpr (NT == 1) return GemmQ4_0::block<1>(b, a, a_stride, acc);  // decode: sdot
    const MmlaBlock w = mmla_q4(b.q);
    const float32x4_t d0 = fp16x4(b.d), d1 = fp16x4(b.d + 4);
    token_pairs<NT>(w, a, a_stride, acc, [&](int32x4_t s03, int32x4_t s47, const ActBlock& x, TileAcc& out) {
      q4_0_scale(s03, s47, d0, d1, x, out);
    });
  }
};

struct MmlaQ4_1 : simd::WeightType<TileQ4_1, TileAcc> {
  static constexpr int kTokTile = kMmlaTokTile;
  template <int NT>
  static void block(const Tile& b, const ActBlock* a, size_t a_stride, Acc* acc) {
    if constexpr (NT == 1) return GemmQ4_1::block<1>(b, a, a_stride, acc);
    const MmlaBlock w = mmla_q4(b.q);
    const float32x4_t d0 = fp16x4(b.d), d1 = fp16x4(b.d + 4), m0 = fp16x4(b.m), m1 = fp16x4(b.m + 4);
    token_pairs<NT>(w, a, a_stride, acc, [&](int32x4_t s03, int32x4_t s47, const ActBlock& x, TileAcc& out) {
      q4_1_scale(s03, s47, d0, d1, m0, m1, x, out);
    });
  }
};

struct MmlaQ8_0 : simd::WeightType<TileQ8_0, TileAcc> {
  static constexpr int kTokTile = kMmlaTokTile;
  template <int NT>
  static void block(const Tile& b, const ActBlock* a, size_t a_stride, Acc* acc) {
    if constexpr (NT == 1) return GemmQ8_0::block<1>(b, a, a_stride, acc);
    const MmlaBlock w = mmla_q8(b);
    const float32x4_t d0 = fp16x4(b.d), d1 = fp16x4(b.d + 4);
    token_pairs<NT>(w, a, a_stride, acc, [&](int32x4_t s03, int32x4_t s47, const ActBlock& x, TileAcc& out) {
      q8_0_scale(s03, s47, d0, d1, x, out);
    });
  }
};

}  // namespace
}  // namespace sysinfer

const sysinfer::Kernels* sysinfer::neon_i8mm_kernels() {
  static constexpr Kernels k = simd::table<MmlaQ4_0, MmlaQ4_1, MmlaQ8_0, GemmQ6_K, GemmFloat, Attention, GemmQ5_0,
                                                 GemmQ5_1, GemmQ4_K, GemmQ5_K, GemmIQ4_NL, GemmIQ4_XS, GemmQ2_K, GemmQ3_K>(
      "neon-i8mm", quantize_act, f16_to_f32, f32_to_f16);
  return &k;
}
