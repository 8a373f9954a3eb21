// NEON kernel table, included three times: by kernels_neon.cpp (armv8-a: widening multiplies), by
// kernels_neon_dotprod.cpp (armv8.2-a+dotprod: `sdot`, as on Kunpeng 920) and by kernels_neon_i8mm.cpp
// (which replaces the Q4_0, Q4_1 and Q8_0 prefill arithmetic with `smmla`, the rest as dotprod's). Twin of
// kernels_generic.cpp; the loops over tiles, tokens and blocks are kernels_simd.h's, this file is the
// arithmetic.
//
// A 16-byte load of an interleaved tile group holds the same 4 bytes of 4 rows, so a 4-way dot
// product against the matching 4 activation bytes (in every lane) gives each lane its own row's
// partial sum: `sdot` by element does exactly that in one instruction, the 4 bytes one 32-bit lane of
// a 16-byte activation load.
//
// Before including, define SYSINFER_NEON_DOTPROD (0 or 1); then neon_table(name) is the table.
#include <arm_neon.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels.h"
#include "kernels_simd.h"

namespace sysinfer {
namespace {  // internal linkage: each including file has its own copy, built with its own flags

// Per-row dot products of 16-byte groups holding the same 4 bytes of 4 rows (rows r..r+3 of a
// tile): add(w, a) accumulates w[4r + k] * a[4r + k]; get() gives the 4 row sums. With dotprod one
// `sdot` per group; without, widening multiplies into int16 lanes (callers keep
// adds * max|w * a| below 32768: at most 8 adds of 4-bit weights), then pairwise widening.
// 32-bit lane L of a16 (4 activation bytes) in every lane.
template <int L>
inline int8x16_t lane4(int8x16_t a16) { return vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(a16), L)); }

struct RowDot {
#if SYSINFER_NEON_DOTPROD
  int32x4_t s;
  // The chain starts at `start` in every row (an offset such as Q4_0's -8 * sum a: no subtraction after).
  explicit RowDot(int32_t start = 0) : s(vdupq_n_s32(start)) {}
  void add(int8x16_t w, int8x16_t a) { s = vdotq_s32(s, w, a); }
  // add(w, lane4<L>(a16)) as one `sdot` by element: 16 activation bytes loaded once serve 4 groups,
  // where a broadcast load (`ld1r`) per group took a sixth of the NEON pipes' time in the Q4_K GEMM
  // (llvm-mca -mcpu=tsv110, scripts/mca_table.py).
  template <int L>
  void add_lane(int8x16_t w, int8x16_t a16) { s = vdotq_laneq_s32(s, w, a16, L); }
  int32x4_t get() const { return s; }
#else
  int16x8_t lo = vdupq_n_s16(0), hi = vdupq_n_s16(0);  // rows r, r+1 | rows r+2, r+3
  int32_t start;  // added to every row's sum by get()
  explicit RowDot(int32_t start = 0) : start(start) {}
  void add(int8x16_t w, int8x16_t a) {
    lo = vmlal_s8(lo, vget_low_s8(w), vget_low_s8(a));
    hi = vmlal_high_s8(hi, w, a);
  }
  template <int L>
  void add_lane(int8x16_t w, int8x16_t a16) { add(w, lane4<L>(a16)); }
  int32x4_t get() const { return vaddq_s32(vpaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi)), vdupq_n_s32(start)); }
#endif
};

// acc[r] += sum_k w[4r + k] * a[4r + k] for any int8 values (Q8_0 products reach 128 * 127).
inline int32x4_t dot4_wide(int32x4_t acc, int8x16_t w, int8x16_t a) {
#if SYSINFER_NEON_DOTPROD
  return vdotq_s32(acc, w, a);
#else
  const int16x8_t p0 = vmull_s8(vget_low_s8(w), vget_low_s8(a));
  const int16x8_t p1 = vmull_high_s8(w, a);
  return vaddq_s32(acc, vpaddq_s32(vpaddlq_s16(p0), vpaddlq_s16(p1)));
#endif
}

// dot4_wide(acc, w, lane4<L>(a16)): with dotprod one `sdot` by element.
template <int L>
inline int32x4_t dot4_wide_lane(int32x4_t acc, int8x16_t w, int8x16_t a16) {
#if SYSINFER_NEON_DOTPROD
  return vdotq_laneq_s32(acc, w, a16, L);
#else
  return dot4_wide(acc, w, lane4<L>(a16));
#endif
}

inline float32x4_t fp16x4(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
inline float fp16_scalar(uint16_t h) { return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0); }

void quantize_act(const float* x, ActBlock* out, int n, int group) {
  for (int b0 = 0; b0 < n / QK; b0 += group) {
    float32x4_t amax = vdupq_n_f32(0.f);
    for (int i = 0; i < 8 * group; ++i) amax = vmaxq_f32(amax, vabsq_f32(vld1q_f32(x + b0 * QK + 4 * i)));
    const float d = vmaxvq_f32(amax) / 127.f;
    const float32x4_t inv = vdupq_n_f32(d > 0.f ? 1.f / d : 0.f);
    for (int b = b0; b < b0 + group; ++b) {
      ActBlock& o = out[b];
      o.d = d;
      int32x4_t q[8];
      for (int i = 0; i < 8; ++i) {  // trunc(s + copysign(0.5, s)), as the generic table
        const float32x4_t s = vmulq_f32(vld1q_f32(x + b * QK + 4 * i), inv);
        const float32x4_t half = vbslq_f32(vcltq_f32(s, vdupq_n_f32(0.f)), vdupq_n_f32(-0.5f), vdupq_n_f32(0.5f));
        q[i] = vcvtq_s32_f32(vaddq_f32(s, half));
      }
      o.sum[0] = int16_t(vaddvq_s32(vaddq_s32(vaddq_s32(q[0], q[1]), vaddq_s32(q[2], q[3]))));
      o.sum[1] = int16_t(vaddvq_s32(vaddq_s32(vaddq_s32(q[4], q[5]), vaddq_s32(q[6], q[7]))));
      for (int i = 0; i < 8; i += 2) {
        const int16x8_t h = vcombine_s16(vqmovn_s32(q[i]), vqmovn_s32(q[i + 1]));
        vst1_s8(o.qs + 4 * i, vqmovn_s16(h));
      }
    }
  }
}

// ---- Q4_0 / Q4_1 / Q8_0: a tile block is 8 rows x 32 columns; lanes are rows ----

// One Q4 tile block unpacked: w[g][h][n], group g, rows 4h..4h+3, n = 0 low nibbles (columns
// 4g..4g+3), n = 1 high nibbles (columns 16+4g..).
struct Q4Unpacked {
  int8x16_t w[4][2][2];
  explicit Q4Unpacked(const uint8_t (*q)[8][4]) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    for (int g = 0; g < 4; ++g)
      for (int h = 0; h < 2; ++h) {
        const uint8x16_t v = vld1q_u8(q[g][4 * h]);
        w[g][h][0] = vreinterpretq_s8_u8(vandq_u8(v, m4));
        w[g][h][1] = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
      }
  }
  // start + row dots (rows 0-3 in *r03, 4-7 in *r47) with one activation block; nibbles unsigned.
  void dot(const ActBlock& a, int32x4_t* r03, int32x4_t* r47, int32_t start = 0) const {
    RowDot s[2] = {RowDot(start), RowDot(start)};  // [rows 0-3 | 4-7]: one chain of 8 each (the tokens
                                                   // of a pass give the parallelism: `add` was 13-16 %)
    const int8x16_t alo = vld1q_s8(a.qs), ahi = vld1q_s8(a.qs + 16);  // group g: 32-bit lane g
    for_const<4>([&](auto g) {
      for (int h = 0; h < 2; ++h) {
        s[h].template add_lane<g>(w[g][h][0], alo);
        s[h].template add_lane<g>(w[g][h][1], ahi);
      }
    });
    *r03 = s[0].get();
    *r47 = s[1].get();
  }
};

// The 8 row accumulators of one tile: rows 0-3 | 4-7.
struct TileAcc {
  float32x4_t r03 = vdupq_n_f32(0.f), r47 = vdupq_n_f32(0.f);
  void store(float* y) const {
    vst1q_f32(y, r03);
    vst1q_f32(y + 4, r47);
  }
};

// The float step of every Q4_0 / Q4_1 / Q8_0 block, apart from its integer dots: s03 | s47 are the
// exact int32 row sums of quant * activation (unsigned nibbles for Q4) over one block. Shared with the
// i8mm table (kernels_neon_i8mm.cpp), whose `smmla` gives the same integers, so both tables give the
// same bits.

// acc += Q4_0 block (scales d0 | d1) times activation block a, from its nibble dots.
inline void q4_0_scale(int32x4_t s03, int32x4_t s47, float32x4_t d0, float32x4_t d1, const ActBlock& a, TileAcc& acc) {
  const int32x4_t off = vdupq_n_s32(8 * (a.sum[0] + a.sum[1]));  // the -8 of every quant
  acc.r03 = vfmaq_f32(acc.r03, vcvtq_f32_s32(vsubq_s32(s03, off)), vmulq_n_f32(d0, a.d));
  acc.r47 = vfmaq_f32(acc.r47, vcvtq_f32_s32(vsubq_s32(s47, off)), vmulq_n_f32(d1, a.d));
}

// acc += Q4_1 block (scales d0 | d1, minimums m0 | m1) times activation block a, from its nibble dots.
inline void q4_1_scale(int32x4_t s03, int32x4_t s47, float32x4_t d0, float32x4_t d1, float32x4_t m0, float32x4_t m1,
                       const ActBlock& a, TileAcc& acc) {
  const float sum = a.d * float(a.sum[0] + a.sum[1]);  // times m: the offset of every weight
  acc.r03 = vfmaq_f32(vfmaq_n_f32(acc.r03, m0, sum), vcvtq_f32_s32(s03), vmulq_n_f32(d0, a.d));
  acc.r47 = vfmaq_f32(vfmaq_n_f32(acc.r47, m1, sum), vcvtq_f32_s32(s47), vmulq_n_f32(d1, a.d));
}

// acc += Q8_0 block (scales d0 | d1) times activation block a, from its quant dots.
inline void q8_0_scale(int32x4_t s03, int32x4_t s47, float32x4_t d0, float32x4_t d1, const ActBlock& a, TileAcc& acc) {
  acc.r03 = vfmaq_f32(acc.r03, vcvtq_f32_s32(s03), vmulq_n_f32(d0, a.d));
  acc.r47 = vfmaq_f32(acc.r47, vcvtq_f32_s32(s47), vmulq_n_f32(d1, a.d));
}

// acc += one unpacked Q4_0 tile block (scales d0 | d1) times activation block a: q4_0_scale's integers
// and float step, the -8 of every quant the chains' start.
inline void q4_0_block(const Q4Unpacked& w, float32x4_t d0, float32x4_t d1, const ActBlock& a, TileAcc& acc) {
  int32x4_t s0, s1;
  w.dot(a, &s0, &s1, -8 * (a.sum[0] + a.sum[1]));
  q8_0_scale(s0, s1, d0, d1, a, acc);
}

// acc += one unpacked Q4_1 tile block (scales d0 | d1, minimums m0 | m1) times activation block a.
inline void q4_1_block(const Q4Unpacked& w, float32x4_t d0, float32x4_t d1, float32x4_t m0, float32x4_t m1,
                       const ActBlock& a, TileAcc& acc) {
  int32x4_t s0, s1;
  w.dot(a, &s0, &s1);
  q4_1_scale(s0, s1, d0, d1, m0, m1, a, acc);
}

// One Q8_0 tile block in registers: w[g][h], group g (columns 4g..4g+3), rows 4h..4h+3 (8-bit weights
// need no unpacking; loaded once for every token of a few-row step, as Q4Unpacked is), and its scales.
struct Q8Loaded {
  int8x16_t w[8][2];
  float32x4_t d0, d1;
  explicit Q8Loaded(const TileQ8_0& t) : d0(fp16x4(t.d)), d1(fp16x4(t.d + 4)) {
    for (int g = 0; g < 8; ++g) {
      w[g][0] = vld1q_s8(t.q[g][0]);
      w[g][1] = vld1q_s8(t.q[g][4]);
    }
  }
  // acc += this block times activation block a (the integer sums in the order they always had).
  void block(const ActBlock& a, TileAcc& acc) const {
    int32x4_t s0 = vdupq_n_s32(0), s1 = vdupq_n_s32(0);
    const int8x16_t a16[2] = {vld1q_s8(a.qs), vld1q_s8(a.qs + 16)};  // group g: lane g % 4 of a16[g / 4]
    for_const<8>([&](auto g) {
      s0 = dot4_wide_lane<g % 4>(s0, w[g][0], a16[g / 4]);
      s1 = dot4_wide_lane<g % 4>(s1, w[g][1], a16[g / 4]);
    });
    q8_0_scale(s0, s1, d0, d1, a, acc);
  }
};

struct GemmQ4_0 : simd::WeightType<TileQ4_0, TileAcc> {  // see kernels_simd.h for what a weight type supplies
  template <int NT>
  static void block(const Tile& b, const ActBlock* a, size_t a_stride, Acc* acc) {
    const Q4Unpacked w(b.q);
    const float32x4_t d0 = fp16x4(b.d), d1 = fp16x4(b.d + 4);
    for (int i = 0; i < NT; ++i) q4_0_block(w, d0, d1, a[i * a_stride], acc[i]);
  }
};

struct GemmQ4_1 : simd::WeightType<TileQ4_1, TileAcc> {
  template <int NT>
  static void block(const Tile& b, const ActBlock* a, size_t a_stride, Acc* acc) {
    const Q4Unpacked w(b.q);
    const float32x4_t d0 = fp16x4(b.d), d1 = fp16x4(b.d + 4), m0 = fp16x4(b.m), m1 = fp16x4(b.m + 4);
    for (int i = 0; i < NT; ++i) q4_1_block(w, d0, d1, m0, m1, a[i * a_stride], acc[i]);
  }
};

struct GemmQ8_0 : simd::WeightType<TileQ8_0, TileAcc> {
  template <int NT>
  static void block(const Tile& b, const ActBlock* a, size_t a_stride, Acc* acc) {
    const Q8Loaded w(b);
    for (int i = 0; i < NT; ++i) w.block(a[i * a_stride], acc[i]);
  }
};

// ---- Q6_K: interleaved tiles of 8 rows (kernels.h) ----
//
// kernels_avx2_impl.h's arithmetic: per sub-block j an exact integer S_j = sc_2j * (dot of the first
// 16 weights) + sc_2j+1 * (the second 16), summed exactly over the super-block, then acc += (d da) S
// with da the scale the 8 activation blocks share (kernels.h's act_group). Here the quants are made signed (q - 32: the offset inside the dot, |w| <= 32, so RowDot's int16
// lanes hold 4 adds) and each half's dot is one RowDot per 4 rows.

// Group g of sub-block J's signed quants (q - 32) for rows 4h..4h+3.
template <int J>
inline int8x16_t q6_group_quants(const TileQ6_K& t, int g, int h) {
  const uint8x16_t v = vld1q_u8(t.q[J / 2][g][4 * h]), hb = vld1q_u8(t.qh[J / 4][g][4 * h]);
  const uint8x16_t low = J % 2 ? vshrq_n_u8(v, 4) : vandq_u8(v, vdupq_n_u8(0x0F));
  const uint8x16_t high = vandq_u8(vshlq_u8(hb, vdupq_n_s8(int8_t(4 - 2 * (J % 4)))), vdupq_n_u8(0x30));
  return vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(low, high)), vdupq_n_s8(32));
}

// Rows 0-3 | 4-7's scales of the 16 weights s (s[r]: row r's) as int32 lanes.
inline void q6_scales32(const int8_t* s, int32x4_t out[2]) {
  const int16x8_t w = vmovl_s8(vld1_s8(s));
  out[0] = vmovl_s16(vget_low_s16(w));
  out[1] = vmovl_high_s16(w);
}

template <int J, int NT>
inline void q6_sub_block(const TileQ6_K& t, const ActBlock* a, size_t a_stride, int32x4_t (*sum)[2]) {
  int32x4_t sc[2][2];  // [half of the sub-block][rows 0-3 | 4-7]
  q6_scales32(t.scales[2 * J], sc[0]);
  q6_scales32(t.scales[2 * J + 1], sc[1]);
  RowDot s[NT][2][2];  // [token][rows 0-3 | 4-7][half]: 4 adds each
  int8x16_t a16[NT][2];  // [token][half]: group g's bytes are lane g % 4 of a16[i][g / 4]
  for (int i = 0; i < NT; ++i)
    for (int q = 0; q < 2; ++q) a16[i][q] = vld1q_s8(a[i * a_stride + J].qs + 16 * q);
  for_const<8>([&](auto g) {
    for (int h = 0; h < 2; ++h) {
      const int8x16_t w = q6_group_quants<J>(t, g, h);
      for (int i = 0; i < NT; ++i) s[i][h][g / 4].template add_lane<g % 4>(w, a16[i][g / 4]);
    }
  });
  for (int i = 0; i < NT; ++i)
    for (int h = 0; h < 2; ++h)
      sum[i][h] = vmlaq_s32(vmlaq_s32(sum[i][h], s[i][h][0].get(), sc[0][h]), s[i][h][1].get(), sc[1][h]);
}

struct GemmQ6_K : simd::WeightType<TileQ6_K, TileAcc> {
  static constexpr WType kType = WType::Q6_K;
  template <int NT>
  static void block(const Tile& t, const ActBlock* a, size_t a_stride, Acc* acc) {
    int32x4_t s[NT][2];  // [token][rows 0-3 | 4-7] the super-block's exact sum S
    for (int i = 0; i < NT; ++i) s[i][0] = s[i][1] = vdupq_n_s32(0);
    for_const<8>([&](auto j) { q6_sub_block<decltype(j)::value, NT>(t, a, a_stride, s); });
    const float32x4_t d0 = fp16x4(t.d), d1 = fp16x4(t.d + 4);
    for (int i = 0; i < NT; ++i) {
      const float da = a[i * a_stride].d;
      acc[i].r03 = vfmaq_f32(acc[i].r03, vmulq_n_f32(d0, da), vcvtq_f32_s32(s[i][0]));
      acc[i].r47 = vfmaq_f32(acc[i].r47, vmulq_n_f32(d1, da), vcvtq_f32_s32(s[i][1]));
    }
  }
};

// What every Q2_K / Q3_K row needs of one token's 8 activation blocks of a super-block.
struct Q6Act {
  float32x4_t d32[2];  // 32 * a_j.d, j = 0..3 | 4..7
  int16x8_t sums[2];   // a_j.sum[0], a_j.sum[1] for j = 0..3 | 4..7
  void load(const ActBlock* a) {
    int32_t s[8];
    float d[8];
    for (int j = 0; j < 8; ++j) {
      std::memcpy(&s[j], a[j].sum, 4);
      d[j] = 32.f * a[j].d;
    }
    sums[0] = vreinterpretq_s16_s32(vld1q_s32(s));
    sums[1] = vreinterpretq_s16_s32(vld1q_s32(s + 4));
    d32[0] = vld1q_f32(d);
    d32[1] = vld1q_f32(d + 4);
  }
};

struct F32x4 {  // for simd::RowSums
  using V = float32x4_t;
  static float sum(float32x4_t v) { return vaddvq_f32(v); }
};

// ---- float vectors and matrices ----

inline float row_dot(const float* a, const float* b, int n) {
  float32x4_t s0 = vdupq_n_f32(0.f), s1 = vdupq_n_f32(0.f);
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
    s1 = vfmaq_f32(s1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
  }
  for (; i + 4 <= n; i += 4) s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
  float s = vaddvq_f32(vaddq_f32(s0, s1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

inline float row_dot(const uint16_t* a, const float* b, int n) {
  float32x4_t s = vdupq_n_f32(0.f);
  int i = 0;
  for (; i + 4 <= n; i += 4) s = vfmaq_f32(s, fp16x4(a + i), vld1q_f32(b + i));
  float t = vaddvq_f32(s);
  for (; i < n; ++i) t += fp16_to_fp32(a[i]) * b[i];
  return t;
}

// 4 BF16 weights to fp32: widen each 16-bit word into the high half of a 32-bit lane (`shll`).
inline float32x4_t bf16x4(const simd::Bf16* p) {
  return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(reinterpret_cast<const uint16_t*>(p)), 16));
}

inline float row_dot(const simd::Bf16* a, const float* b, int n) {  // two chains, as F32's
  float32x4_t s0 = vdupq_n_f32(0.f), s1 = vdupq_n_f32(0.f);
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    s0 = vfmaq_f32(s0, bf16x4(a + i), vld1q_f32(b + i));
    s1 = vfmaq_f32(s1, bf16x4(a + i + 4), vld1q_f32(b + i + 4));
  }
  for (; i + 4 <= n; i += 4) s0 = vfmaq_f32(s0, bf16x4(a + i), vld1q_f32(b + i));
  float s = vaddvq_f32(vaddq_f32(s0, s1));
  for (; i < n; ++i) s += bf16_to_fp32(a[i].bits) * b[i];
  return s;
}

struct GemmFloat {
  // y[i * ldy] = dot(w, x_i) for one F32 / F16 / BF16 row and NT tokens, one token after another.
  template <int NT, class W>
  static void row(const W* w, int cols, const float* x, float* y, int ldy) {
    for (int i = 0; i < NT; ++i) y[size_t(i) * ldy] = row_dot(w, x + size_t(i) * cols, cols);
  }
};

// ---- attention over one chunk of the paged cache: fp16 K/V converted in registers ----
//
// 4 floats per vector (`fcvtl` of 4 halves, in base Armv8-A); tiles of 4 rows x 4 vectors (16
// accumulators of the 32 registers). Each output is one fused chain from 0, as in the x86 tables.
struct Attention {  // see kernels_simd.h
  using V = float32x4_t;
  static constexpr int W = 4, kRows = 4, kVecs = 4;
  static V zero() { return vdupq_n_f32(0.f); }
  static V bcast(const float* x) { return vld1q_dup_f32(x); }
  static V fma(V a, V b, V c) { return vfmaq_f32(c, a, b); }
  static V load_h(const uint16_t* p) { return fp16x4(p); }
  static V load_h(const uint16_t* p, int n) {  // through a zeroed copy: reads only n halves
    uint16_t h[4] = {};
    std::memcpy(h, p, sizeof(uint16_t) * n);
    return fp16x4(h);
  }
  static void store(float* p, V v) { vst1q_f32(p, v); }
  static void store(float* p, V v, int n) {
    float f[4];
    vst1q_f32(f, v);
    std::memcpy(p, f, sizeof(float) * n);
  }
};

void f16_to_f32(const uint16_t* src, float* dst, int n) {
  int i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(dst + i, fp16x4(src + i));
  for (; i < n; ++i) dst[i] = fp16_to_fp32(src[i]);
}

void f32_to_f16(const float* src, uint16_t* dst, int n) {
  int i = 0;  // FCVTN rounds to nearest even (the default FPCR mode)
  for (; i + 4 <= n; i += 4) vst1_u16(dst + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(src + i))));
  for (; i < n; ++i) dst[i] = fp32_to_fp16(src[i]);
}

}  // namespace
}  // namespace sysinfer

#include "kernels_neon_quants.h"  // Q5_0, Q5_1, Q4_K, Q5_K, IQ4_NL, IQ4_XS, Q2_K, Q3_K

namespace sysinfer {
namespace {

constexpr Kernels neon_table(const char* name) {
  return simd::table<GemmQ4_0, GemmQ4_1, GemmQ8_0, GemmQ6_K, GemmFloat, Attention, GemmQ5_0, GemmQ5_1, GemmQ4_K,
                     GemmQ5_K, GemmIQ4_NL, GemmIQ4_XS, GemmQ2_K, GemmQ3_K>(name, quantize_act, f16_to_f32, f32_to_f16);
}

}  // namespace
}  // namespace sysinfer
