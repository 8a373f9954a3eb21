// NEON arithmetic for the types of llama.cpp's K-quant files (issue 23): Q5_0, Q5_1, Q4_K, Q5_K,
// IQ4_NL, IQ4_XS, Q2_K, Q3_K.
// Included by kernels_neon_impl.h (after its Q4_0 arithmetic, whose RowDot, fp16x4 and TileAcc
// it uses), so the neon, neon-dotprod and neon-i8mm tables all have it (i8mm with dotprod's `sdot`).
// Twin of kernels_generic.cpp's decoded form and of kernels_avx2_quants.h; the loops are
// kernels_simd.h's. A 16-byte load of an interleaved tile holds the same 4 bytes of 4 rows (rows
// 0-3 | 4-7), so as for Q4_0 each lane gets its own row's sums.
//
// RowDot without dotprod accumulates products in int16 lanes: every chain below adds at most 8
// products of |w| <= 31 and |a| <= 127 (8 * 3937 < 32768).
#pragma once

namespace sysinfer {
namespace {

// ---- Q5_0 / Q5_1 ----

// One Q5 tile block unpacked: w[g][h][n] as Q4Unpacked's, each nibble with its fifth bit (qh's bit
// 8k + 4n + g, kernels.h's order, is bit 4 of byte k of group g's half n).
struct Q5Unpacked {
  int8x16_t w[4][2][2];
  Q5Unpacked(const uint8_t (*q)[8][4], const uint8_t (*qh)[4]) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F), bit4 = vdupq_n_u8(0x10);
    for (int h = 0; h < 2; ++h) {
      const uint32x4_t bits = vld1q_u32(reinterpret_cast<const uint32_t*>(qh[4 * h]));  // rows 4h..4h+3
      for (int g = 0; g < 4; ++g) {
        const uint8x16_t v = vld1q_u8(q[g][4 * h]);
        const uint8x16_t lo = vreinterpretq_u8_u32(vshlq_u32(bits, vdupq_n_s32(4 - g)));  // bit g -> 4
        const uint8x16_t hi = vreinterpretq_u8_u32(vshlq_u32(bits, vdupq_n_s32(-g)));     // bit 4 + g -> 4
        w[g][h][0] = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(v, m4), vandq_u8(lo, bit4)));
        w[g][h][1] = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(v, 4), vandq_u8(hi, bit4)));
      }
    }
  }
  // start + row dots with one activation block (one chain of 8 per 4 rows: 8 * 31 * 127 < 32768 for
  // the plain neon table's int16 lanes).
  void dot(const ActBlock& a, int32x4_t* r03, int32x4_t* r47, int32_t start = 0) const {
    RowDot s[2] = {RowDot(start), RowDot(start)};  // [rows 0-3 | 4-7]
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

struct GemmQ5_0 : simd::WeightType<TileQ5_0, TileAcc> {  // x = d * (q - 16)
  static constexpr WType kType = WType::Q5_0;
  template <int NT>
  static void block(const Tile& b, const ActBlock* a, size_t a_stride, Acc* acc) {
    const Q5Unpacked w(b.q, b.qh);
    const float32x4_t d0 = fp16x4(b.d), d1 = fp16x4(b.d + 4);
    for (int i = 0; i < NT; ++i) {
      const ActBlock& ai = a[i * a_stride];
      int32x4_t s0, s1;
      w.dot(ai, &s0, &s1, -16 * (ai.sum[0] + ai.sum[1]));  // the -16 of every quant as the chains' start
      acc[i].r03 = vfmaq_f32(acc[i].r03, vcvtq_f32_s32(s0), vmulq_n_f32(d0, ai.d));
      acc[i].r47 = vfmaq_f32(acc[i].r47, vcvtq_f32_s32(s1), vmulq_n_f32(d1, ai.d));
    }
  }
};

struct GemmQ5_1 : simd::WeightType<TileQ5_1, TileAcc> {  // x = d * q + m
  static constexpr WType kType = WType::Q5_1;
  template <int NT>
  static void block(const Tile& b, const ActBlock* a, size_t a_stride, Acc* acc) {
    const Q5Unpacked w(b.q, b.qh);
    const float32x4_t d0 = fp16x4(b.d), d1 = fp16x4(b.d + 4), m0 = fp16x4(b.m), m1 = fp16x4(b.m + 4);
    for (int i = 0; i < NT; ++i) {
      int32x4_t s0, s1;
      w.dot(a[i * a_stride], &s0, &s1);
      q4_1_scale(s0, s1, d0, d1, m0, m1, a[i * a_stride], acc[i]);  // the same float step as Q4_1
    }
  }
};

// ---- Q4_K / Q5_K (see kernels_avx2_quants.h for the arithmetic) ----

// Sub-block j's scales (sc) and minimums (mn) of the 8 rows, byte r of each word for row r.
inline void k_scales(const uint8_t (*s)[8], uint64_t sc[8], uint64_t mn[8]) {
  uint64_t b[12];
  std::memcpy(b, s, sizeof b);
  const uint64_t low6 = 0x3F3F3F3F3F3F3F3Full, low4 = 0x0F0F0F0F0F0F0F0Full, bits45 = 0x3030303030303030ull;
  for (int j = 0; j < 4; ++j) {
    sc[j] = b[j] & low6;
    mn[j] = b[j + 4] & low6;
    sc[j + 4] = (b[j + 8] & low4) | ((b[j] >> 2) & bits45);
    mn[j + 4] = ((b[j + 8] >> 4) & low4) | ((b[j + 4] >> 2) & bits45);
  }
}

// The 8 bytes of w as int32 lanes: rows 0-3 in *r03, 4-7 in *r47.
inline void bytes_to_i32(uint64_t w, int32x4_t* r03, int32x4_t* r47) {
  const uint16x8_t v = vmovl_u8(vcreate_u8(w));
  *r03 = vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(v)));
  *r47 = vreinterpretq_s32_u32(vmovl_high_u16(v));
}

// One sub-block of a K tile, quants w[g][h] (group g, rows 4h..4h+3), for NT tokens: s += sc * dot,
// m += mn * sum a_j, exact integers over the super-block (|s| < 2^26; kernels_avx2_quants.h).
template <int NT>
inline void k_sub_block(const int8x16_t (*w)[2], uint64_t sc, uint64_t mn, const ActBlock* a, size_t a_stride, int j,
                        int32x4_t (*s)[2], int32x4_t (*m)[2]) {
  int32x4_t sc0, sc1, mn0, mn1;
  bytes_to_i32(sc, &sc0, &sc1);
  bytes_to_i32(mn, &mn0, &mn1);
  for (int i = 0; i < NT; ++i) {
    const ActBlock& aj = a[i * a_stride + j];
    RowDot p[2];  // [rows 0-3 | 4-7]: one chain of 8 adds each (8 * 31 * 127 < 32768: Q5_K too)
    const int8x16_t a16[2] = {vld1q_s8(aj.qs), vld1q_s8(aj.qs + 16)};  // group g: lane g % 4 of a16[g / 4]
    for_const<8>([&](auto g) {
      p[0].template add_lane<g % 4>(w[g][0], a16[g / 4]);
      p[1].template add_lane<g % 4>(w[g][1], a16[g / 4]);
    });
    s[i][0] = vmlaq_s32(s[i][0], p[0].get(), sc0);
    s[i][1] = vmlaq_s32(s[i][1], p[1].get(), sc1);
    const int32_t sum = aj.sum[0] + aj.sum[1];
    m[i][0] = vmlaq_n_s32(m[i][0], mn0, sum);
    m[i][1] = vmlaq_n_s32(m[i][1], mn1, sum);
  }
}

// acc += (d da) s - (dmin da) m: one float step per super-block and token, da the scale its 8
// activation blocks share (kernels.h's act_group).
template <int NT, class Tile>
inline void k_finish(const Tile& t, const ActBlock* a, size_t a_stride, const int32x4_t (*s)[2],
                     const int32x4_t (*m)[2], TileAcc* acc) {
  const float32x4_t d0 = fp16x4(t.d), d1 = fp16x4(t.d + 4), m0 = fp16x4(t.dmin), m1 = fp16x4(t.dmin + 4);
  for (int i = 0; i < NT; ++i) {
    const float da = a[i * a_stride].d;
    acc[i].r03 = vfmsq_f32(vfmaq_f32(acc[i].r03, vmulq_n_f32(d0, da), vcvtq_f32_s32(s[i][0])), vmulq_n_f32(m0, da),
                           vcvtq_f32_s32(m[i][0]));
    acc[i].r47 = vfmsq_f32(vfmaq_f32(acc[i].r47, vmulq_n_f32(d1, da), vcvtq_f32_s32(s[i][1])), vmulq_n_f32(m1, da),
                           vcvtq_f32_s32(m[i][1]));
  }
}

// Sub-block j = 2c + Half of a K tile (Half 0: the low nibbles of q[c], 1: the high ones; Q5_K's bit j
// of qh as bit 4) for NT tokens. Half is a template argument so the nibble choice is made at compile
// time: as a run-time `j % 2 ? shift : mask` over a loop of 8, clang blended both (and, bic, orr), which
// llvm-mca put at two thirds of the NEON pipes' time on Kunpeng 920 (docs/benchmarks.md).
template <int NT, bool Q5, int Half, class Tile>
inline void k_half_sub_block(const Tile& t, const uint8_t (*qh)[8][4], int c, const uint64_t* sc, const uint64_t* mn,
                             const ActBlock* a, size_t a_stride, int32x4_t (*sa)[2], int32x4_t (*sm)[2]) {
  const int j = 2 * c + Half;
  const uint8x16_t m4 = vdupq_n_u8(0x0F), bit4 = vdupq_n_u8(0x10);
  int8x16_t w[8][2];
  for (int g = 0; g < 8; ++g)
    for (int h = 0; h < 2; ++h) {
      const uint8x16_t v = vld1q_u8(t.q[c][g][4 * h]);
      uint8x16_t q = Half ? vshrq_n_u8(v, 4) : vandq_u8(v, m4);
      if constexpr (Q5) {  // bit j of the qh byte -> bit 4
        const uint8x16_t hb = vshlq_u8(vld1q_u8(qh[g][4 * h]), vdupq_n_s8(int8_t(4 - j)));
        q = vorrq_u8(q, vandq_u8(hb, bit4));
      }
      w[g][h] = vreinterpretq_s8_u8(q);
    }
  k_sub_block<NT>(w, sc[j], mn[j], a, a_stride, j, sa, sm);
}

// Q4_K and Q5_K (qh: Q5_K's fifth bits, [g][r][k]) share all but the unpacking. Sub-blocks in order
// j = 0..7, as before the split into halves: the same sums, the same bits.
template <int NT, bool Q5, class Tile>
inline void k_quant_block(const Tile& t, const uint8_t (*qh)[8][4], const ActBlock* a, size_t a_stride, TileAcc* acc) {
  uint64_t sc[8], mn[8];
  k_scales(t.scales, sc, mn);
  int32x4_t s[NT][2], m[NT][2];  // [token][rows 0-3 | 4-7]: scales x dots, minimums x activation sums
  for (int i = 0; i < NT; ++i) s[i][0] = s[i][1] = m[i][0] = m[i][1] = vdupq_n_s32(0);
  for (int c = 0; c < 4; ++c) {
    k_half_sub_block<NT, Q5, 0>(t, qh, c, sc, mn, a, a_stride, s, m);
    k_half_sub_block<NT, Q5, 1>(t, qh, c, sc, mn, a, a_stride, s, m);
  }
  k_finish<NT>(t, a, a_stride, s, m, acc);
}

struct GemmQ4_K : simd::WeightType<TileQ4_K, TileAcc> {
  static constexpr WType kType = WType::Q4_K;
  template <int NT>
  static void block(const Tile& t, const ActBlock* a, size_t a_stride, Acc* acc) {
    k_quant_block<NT, false>(t, nullptr, a, a_stride, acc);
  }
};

struct GemmQ5_K : simd::WeightType<TileQ5_K, TileAcc> {
  static constexpr WType kType = WType::Q5_K;
  template <int NT>
  static void block(const Tile& t, const ActBlock* a, size_t a_stride, Acc* acc) {
    k_quant_block<NT, true>(t, t.qh, a, a_stride, acc);
  }
};

// ---- IQ4_NL / IQ4_XS: 4-bit indices into kIQ4NL's 16 signed levels (`tbl` looks them up) ----

// One IQ4 tile block (the Q4_0 layout) as signed levels: w[g][h][n], group g, rows 4h..4h+3, low
// (n = 0) or high (n = 1) nibbles.
struct IQ4Unpacked {
  int8x16_t w[4][2][2];
  explicit IQ4Unpacked(const uint8_t (*q)[8][4]) {
    const int8x16_t levels = vld1q_s8(kIQ4NL);
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    for (int g = 0; g < 4; ++g)
      for (int h = 0; h < 2; ++h) {
        const uint8x16_t v = vld1q_u8(q[g][4 * h]);
        w[g][h][0] = vqtbl1q_s8(levels, vandq_u8(v, m4));
        w[g][h][1] = vqtbl1q_s8(levels, vshrq_n_u8(v, 4));
      }
  }
  // Rows 0-3 and 4-7's int32 dots with activation block a (products up to 127 * 127: dot4_wide).
  void dot(const ActBlock& a, int32x4_t* r03, int32x4_t* r47) const {
    int32x4_t s[2] = {vdupq_n_s32(0), vdupq_n_s32(0)};
    const int8x16_t alo = vld1q_s8(a.qs), ahi = vld1q_s8(a.qs + 16);  // group g: 32-bit lane g
    for_const<4>([&](auto g) {
      for (int h = 0; h < 2; ++h)
        s[h] = dot4_wide_lane<g>(dot4_wide_lane<g>(s[h], w[g][h][0], alo), w[g][h][1], ahi);
    });
    *r03 = s[0];
    *r47 = s[1];
  }
};

struct GemmIQ4_NL : simd::WeightType<TileIQ4_NL, TileAcc> {  // x = d * kIQ4NL[q]
  static constexpr WType kType = WType::IQ4_NL;
  template <int NT>
  static void block(const Tile& b, const ActBlock* a, size_t a_stride, Acc* acc) {
    const IQ4Unpacked w(b.q);
    const float32x4_t d0 = fp16x4(b.d), d1 = fp16x4(b.d + 4);
    for (int i = 0; i < NT; ++i) {
      int32x4_t s0, s1;
      w.dot(a[i * a_stride], &s0, &s1);
      q8_0_scale(s0, s1, d0, d1, a[i * a_stride], acc[i]);  // the same float step as Q8_0
    }
  }
};

// IQ4_XS: 8 IQ4_NL-shaped sub-blocks with 6-bit scales ls_j - 32: sa += a_j.d * (sc_j * dot_j),
// then acc += d * sa (as kernels_avx2_quants.h).
struct GemmIQ4_XS : simd::WeightType<TileIQ4_XS, TileAcc> {
  static constexpr WType kType = WType::IQ4_XS;
  template <int NT>
  static void block(const Tile& t, const ActBlock* a, size_t a_stride, Acc* acc) {
    uint64_t lo_words[4];
    std::memcpy(lo_words, t.scales_l, sizeof lo_words);  // word j / 2: byte r is row r's scales_l[j / 2]
    const uint16x8_t hi16 = vld1q_u16(t.scales_h);
    const int32x4_t hi[2] = {vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(hi16))),
                             vreinterpretq_s32_u32(vmovl_high_u16(hi16))};
    float32x4_t sa[NT][2];
    for (int i = 0; i < NT; ++i) sa[i][0] = sa[i][1] = vdupq_n_f32(0.f);
    for (int j = 0; j < 8; ++j) {
      int32x4_t l[2], sc[2];
      bytes_to_i32(lo_words[j / 2] >> (4 * (j % 2)), &l[0], &l[1]);
      for (int h = 0; h < 2; ++h) {
        const int32x4_t h2 = vandq_s32(vshlq_s32(hi[h], vdupq_n_s32(-2 * j)), vdupq_n_s32(3));
        sc[h] = vsubq_s32(vorrq_s32(vandq_s32(l[h], vdupq_n_s32(15)), vshlq_n_s32(h2, 4)), vdupq_n_s32(32));
      }
      const IQ4Unpacked w(t.q[j]);
      for (int i = 0; i < NT; ++i) {
        const ActBlock& aj = a[i * a_stride + j];
        int32x4_t s0, s1;
        w.dot(aj, &s0, &s1);
        sa[i][0] = vfmaq_n_f32(sa[i][0], vcvtq_f32_s32(vmulq_s32(s0, sc[0])), aj.d);
        sa[i][1] = vfmaq_n_f32(sa[i][1], vcvtq_f32_s32(vmulq_s32(s1, sc[1])), aj.d);
      }
    }
    const float32x4_t d0 = fp16x4(t.d), d1 = fp16x4(t.d + 4);
    for (int i = 0; i < NT; ++i) {
      acc[i].r03 = vfmaq_f32(acc[i].r03, d0, sa[i][0]);
      acc[i].r47 = vfmaq_f32(acc[i].r47, d1, sa[i][1]);
    }
  }
};

// ---- Q2_K / Q3_K: rows are whole super-blocks (not interleaved) ----
//
// Group j = 4n + s (activation block j) holds (qs[32n + l] >> 2s) & 3, with Q3_K's hmask bit j of
// byte l as bit 2: unsigned u (Q3_K's q = u - 4). per group two dots times their 16-weight scales on u, then
// once per super-block Q3_K's offset (4 * sc by the activation half sums) or Q2_K's minimums (mn by
// the half sums, times dmin). Twin of kernels_avx2_quants.h's.

// q[j][h]: group j's 16 quants of weights 16h..16h+15 (hmask: Q3_K's, else nullptr).
template <bool Q3>
inline void unpack_q23(const uint8_t* qs, const uint8_t* hmask, int8x16_t q[8][2]) {
  const uint8x16_t m3 = vdupq_n_u8(3), bit2 = vdupq_n_u8(4);
  for (int h = 0; h < 2; ++h) {
    const uint8x16_t hm = Q3 ? vld1q_u8(hmask + 16 * h) : vdupq_n_u8(0);
    for (int n = 0; n < 2; ++n) {
      const uint8x16_t v = vld1q_u8(qs + 32 * n + 16 * h);
      for (int s = 0; s < 4; ++s) {
        const int j = 4 * n + s;
        uint8x16_t u = vandq_u8(vshlq_u8(v, vdupq_n_s8(int8_t(-2 * s))), m3);
        if constexpr (Q3) u = vorrq_u8(u, vandq_u8(vshlq_u8(hm, vdupq_n_s8(int8_t(2 - j))), bit2));
        q[j][h] = vreinterpretq_s8_u8(u);
      }
    }
  }
}

// sum_j a_j.d * sum_k u_jk * sc(j, k) * a_jk over one row's super-block, as 4 float lanes.
inline float32x4_t q23_dots(const int8x16_t q[8][2], const int8_t* sc, const ActBlock* a) {
  float32x4_t s = vdupq_n_f32(0.f);
  for (int j = 0; j < 8; ++j) {
    const int32x4_t h0 = dot4_wide(vdupq_n_s32(0), q[j][0], vld1q_s8(a[j].qs));
    const int32x4_t h1 = dot4_wide(vdupq_n_s32(0), q[j][1], vld1q_s8(a[j].qs + 16));
    const int32x4_t p = vmlaq_n_s32(vmulq_n_s32(h0, sc[2 * j]), h1, sc[2 * j + 1]);
    s = vfmaq_n_f32(s, vcvtq_f32_s32(p), a[j].d);
  }
  return s;
}

// sum_j a_j.d * (k16[2j] * a_j.sum[0] + k16[2j + 1] * a_j.sum[1]), as 4 float lanes (act: Q6Act's
// gathered sums and 32 * a_j.d).
inline float32x4_t q23_half_sums(const int16x8_t k16[2], const Q6Act& act) {
  float32x4_t s = vdupq_n_f32(0.f);
  for (int k = 0; k < 2; ++k) {
    const int32x4_t c = vpaddq_s32(vmull_s16(vget_low_s16(k16[k]), vget_low_s16(act.sums[k])),
                                   vmull_high_s16(k16[k], act.sums[k]));
    s = vfmaq_f32(s, vcvtq_f32_s32(c), vmulq_n_f32(act.d32[k], 1.f / 32));  // exact: a power of two
  }
  return s;
}

inline void widen_s8(int8x16_t v, int16x8_t out[2]) {
  out[0] = vmovl_s8(vget_low_s8(v));
  out[1] = vmovl_high_s8(v);
}

struct GemmQ2_K : simd::WeightType<TileQ2_K, simd::RowSums<F32x4>> {  // x = d * sc * q - dmin * mn
  static constexpr WType kType = WType::Q2_K;
  template <int NT>
  static void block(const Tile& t, const ActBlock* a, size_t a_stride, Acc* acc) {
    Q6Act act[NT];
    for (int i = 0; i < NT; ++i) act[i].load(a + i * a_stride);
    for (int r = 0; r < ROW_TILE; ++r) {
      const BlockQ2_K& b = t.b[r];
      int8x16_t q[8][2];
      unpack_q23<false>(b.qs, nullptr, q);
      const uint8x16_t raw = vld1q_u8(b.scales);
      int8_t sc[16];
      vst1q_s8(sc, vreinterpretq_s8_u8(vandq_u8(raw, vdupq_n_u8(0x0F))));
      int16x8_t mn16[2];
      widen_s8(vreinterpretq_s8_u8(vshrq_n_u8(raw, 4)), mn16);
      const float32x4_t d = vdupq_n_f32(fp16_scalar(b.d)), dmin = vdupq_n_f32(fp16_scalar(b.dmin));
      for (int i = 0; i < NT; ++i) {
        const float32x4_t main = q23_dots(q, sc, a + i * a_stride);
        acc[i].r[r] = vfmsq_f32(vfmaq_f32(acc[i].r[r], main, d), q23_half_sums(mn16, act[i]), dmin);
      }
    }
  }
};

struct GemmQ3_K : simd::WeightType<TileQ3_K, simd::RowSums<F32x4>> {  // x = d * (s - 32) * (u - 4)
  static constexpr WType kType = WType::Q3_K;
  template <int NT>
  static void block(const Tile& t, const ActBlock* a, size_t a_stride, Acc* acc) {
    Q6Act act[NT];
    for (int i = 0; i < NT; ++i) act[i].load(a + i * a_stride);
    for (int r = 0; r < ROW_TILE; ++r) {
      const BlockQ3_K& b = t.b[r];
      int8x16_t q[8][2];
      unpack_q23<true>(b.qs, b.hmask, q);
      // the 16 6-bit scales (kernels.h's packing) on 64-bit words: byte i of lo / hi is scale i / 8 + i
      uint64_t w;
      uint32_t h;
      std::memcpy(&w, b.scales, 8);
      std::memcpy(&h, b.scales + 8, 4);
      const uint64_t m4 = 0x0F0F0F0F0F0F0F0Full;
      const uint32_t m2 = 0x03030303u;
      const uint64_t hlo = (h & m2) | uint64_t((h >> 2) & m2) << 32, hhi = ((h >> 4) & m2) | uint64_t((h >> 6) & m2) << 32;
      const int8x16_t scv = vsubq_s8(vcombine_s8(vcreate_s8((w & m4) | (hlo << 4)), vcreate_s8(((w >> 4) & m4) | (hhi << 4))),
                                     vdupq_n_s8(32));
      int8_t sc[16];
      vst1q_s8(sc, scv);
      int16x8_t sc16[2];
      widen_s8(scv, sc16);
      const float32x4_t d = vdupq_n_f32(fp16_scalar(b.d)), four = vdupq_n_f32(4.f);
      for (int i = 0; i < NT; ++i) {
        const float32x4_t main = q23_dots(q, sc, a + i * a_stride);
        acc[i].r[r] = vfmaq_f32(acc[i].r[r], vfmsq_f32(main, q23_half_sums(sc16, act[i]), four), d);  // q = u - 4
      }
    }
  }
};

}  // namespace
}  // namespace sysinfer
