// AVX2 + FMA + F16C arithmetic (for files compiled with at least -mavx2 -mfma -mf16c), included by
// kernels_avx2.cpp, whose table is all of it, and by kernels_avx512.cpp, which takes what it does not
// redo at 512 bits (float rows, fp16 conversion; Q6_K's scale loads too). Twin of
// kernels_generic.cpp; the loops over tiles, tokens and blocks are kernels_simd.h's, this file is the
// arithmetic. Everything is in an unnamed namespace: each including file has its own copy, built with
// its own flags.
//
// Quantized GEMM: one 32-byte load of an interleaved tile holds the same 4 bytes of all 8 rows, so
// `maddubs` against the matching 4 activation bytes broadcast to every lane gives each lane (row)
// its own partial dot product: no horizontal sums inside the loop. Up to 4 tokens share each
// unpacked weight tile (prefill).
#pragma once

#include <algorithm>
#include <immintrin.h>

#include <cstring>

#include "kernels.h"
#include "kernels_simd.h"

namespace sysinfer {

namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

struct F32x8 {  // for simd::RowSums
  using V = __m256;
  static float sum(__m256 v) { return hsum(v); }
};

inline int hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

inline __m256 load_fp16x8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }

inline __m256i bcast4(const int8_t* p) {  // 4 activation bytes to every 32-bit lane
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// ---- activations ----

// (The AVX-512 table, which includes this file, has its own: hence maybe_unused.)
inline float amax8(__m256 v) {  // max of the 8 lanes
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

// (The AVX-512 table, which includes this file, has its own: hence maybe_unused.)
[[maybe_unused]] void quantize_act(const float* x, ActBlock* out, int n, int group) {
  const __m256 sign = _mm256_set1_ps(-0.f), half = _mm256_set1_ps(0.5f);
  for (int b0 = 0; b0 < n / QK; b0 += group) {
    __m256 amax = _mm256_setzero_ps();
    for (int i = 0; i < 4 * group; ++i) amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + b0 * QK + 8 * i)));
    const float d = amax8(amax) / 127.f;
    const __m256 inv = _mm256_set1_ps(d > 0.f ? 1.f / d : 0.f);
    for (int b = b0; b < b0 + group; ++b) {
      __m256i q[4];
      for (int i = 0; i < 4; ++i) {  // trunc(x / d + copysign(0.5, x)): round half away from zero
        const __m256 s = _mm256_mul_ps(_mm256_loadu_ps(x + b * QK + 8 * i), inv);
        q[i] = _mm256_cvttps_epi32(_mm256_add_ps(s, _mm256_or_ps(_mm256_and_ps(s, sign), half)));
      }
      ActBlock& o = out[b];
      o.d = d;
      o.sum[0] = int16_t(hsum_i32(_mm256_add_epi32(q[0], q[1])));
      o.sum[1] = int16_t(hsum_i32(_mm256_add_epi32(q[2], q[3])));
      // int32 x 32 -> int8 x 32; packs interleave 128-bit lanes, the permute restores the order.
      const __m256i p16a = _mm256_packs_epi32(q[0], q[1]), p16b = _mm256_packs_epi32(q[2], q[3]);
      const __m256i p8 = _mm256_packs_epi16(p16a, p16b);
      const __m256i ordered = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o.qs), ordered);
    }
  }
}

// ---- Q4_0 / Q4_1: 8 rows x 32 columns per tile block ----

// An empty asm that "changes" v: GCC may not reassociate the integer adds across it. Without it, GCC
// turns a token's chain of adds (one per group) into a tree over all the groups' products, and so
// computes every product of the block first: 4 tokens' 32 products spilled to the stack.
inline void keep(__m256i& v) { asm("" : "+x"(v)); }

// Per-row int16 dot products of one Q4 tile block with NT tokens' activation blocks (weights
// unsigned): s16[i] for token a[i * a_stride]. Group by group: each group's nibbles are unpacked once
// and meet every token's activation bytes while in registers, so NT int16 sums are live rather than
// all 8 unpacked vectors (at NT = 4, 8 unpacked vectors, 4 accumulators and the sums did not fit the
// 16 registers: the accumulators went through the stack every block). The sums are exact integers
// (|each| <= 16 * 15 * 127 < 2^15), so a token's sums are the same whatever NT.
template <int NT>
inline void q4_tile_dots(const uint8_t (*q)[8][4], const ActBlock* a, size_t a_stride, __m256i s16[NT]) {
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  for (int g = 0; g < 4; ++g) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q[g]));
    const __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
    for (int i = 0; i < NT; ++i) {
      const int8_t* qs = a[i * a_stride].qs;
      const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, bcast4(qs + 4 * g)),
                                         _mm256_maddubs_epi16(hi, bcast4(qs + 16 + 4 * g)));
      s16[i] = g == 0 ? p : _mm256_add_epi16(s16[i], p);
      keep(s16[i]);
    }
  }
}

inline __m256i widen_sum(__m256i s16) { return _mm256_madd_epi16(s16, _mm256_set1_epi16(1)); }

// k * (a.sum[0] + a.sum[1]) in every int32 lane: the two int16 half sums broadcast as one 32-bit word
// (a load, no shuffle) and `vpmaddwd` by k. (Scalar adds, `vmovd` and a register broadcast cost
// about 2 cycles a token and block on Zen 3.)
inline __m256i act_sum_times(const ActBlock& a, int16_t k) {
  int32_t pair;
  std::memcpy(&pair, a.sum, 4);
  return _mm256_madd_epi16(_mm256_set1_epi32(pair), _mm256_set1_epi16(k));
}

// The 8 row sums of one tile for one token.
struct TileAcc {
  __m256 v = _mm256_setzero_ps();
  void store(float* y) const { _mm256_storeu_ps(y, v); }
};

// A few-row step of up to 8 tokens takes each Q4 block in one pass (kFewTokTile), each group's
// nibbles unpacked once for all of them; prefill keeps passes of 4. In two passes of 4, r = 8 cost
// 2.3x r = 4; in one, 1.8x (2 threads over 1 GB of Q4_0, `test_kernels --bench-rows Q4_0 3`, EPYC
// Zen 3 at load 10-12: r = 8 94 -> 71 ms, r = 2 30 -> 26 ms with simd::rows_lockstep not inlined).
constexpr int kQ4FewTokTile = simd::kFewRows;

struct GemmQ4_0 : simd::WeightType<TileQ4_0, TileAcc> {  // see kernels_simd.h for what a weight type supplies
  static constexpr int kFewTokTile = kQ4FewTokTile;
  template <int NT>
  static void block(const Tile& b, const ActBlock* a, size_t a_stride, Acc* acc) {
    __m256i s16[NT];
    q4_tile_dots<NT>(b.q, a, a_stride, s16);
    const __m256 dw = load_fp16x8(b.d);
    for (int i = 0; i < NT; ++i) {  // (dot - 8 sum(a)) * (dw * da)
      const ActBlock& ai = a[i * a_stride];
      const __m256i dot = _mm256_add_epi32(widen_sum(s16[i]), act_sum_times(ai, -8));
      acc[i].v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw, _mm256_set1_ps(ai.d)), acc[i].v);
    }
  }
};

struct GemmQ4_1 : simd::WeightType<TileQ4_1, TileAcc> {
  static constexpr int kFewTokTile = kQ4FewTokTile;
  template <int NT>
  static void block(const Tile& b, const ActBlock* a, size_t a_stride, Acc* acc) {
    __m256i s16[NT];
    q4_tile_dots<NT>(b.q, a, a_stride, s16);
    const __m256 dw = load_fp16x8(b.d), mw = load_fp16x8(b.m);
    for (int i = 0; i < NT; ++i) {  // dot * (dw * da) + mw * (da * sum(a))
      const ActBlock& ai = a[i * a_stride];
      const __m256 dot = _mm256_cvtepi32_ps(widen_sum(s16[i]));
      const __m256 da = _mm256_set1_ps(ai.d);  // da * sum(a), as a vector: see act_sum_times
      const __m256 v = _mm256_fmadd_ps(dot, _mm256_mul_ps(dw, da), acc[i].v);
      acc[i].v = _mm256_fmadd_ps(mw, _mm256_mul_ps(da, _mm256_cvtepi32_ps(act_sum_times(ai, 1))), v);
    }
  }
};

// ---- Q8_0: signed weights, so maddubs takes |w| and the activation carries w's sign ----

// Group by group, as q4_tile_dots: each group's weights (and |w|) meet every token's 4 activation
// bytes while in registers; pairs reach 2 * 127 * 127, so each is widened to int32 at once. Exact.
// The group loop fully unrolled: GCC 12 left it rolled at 4 tokens. (Before, from 3 tokens all 8
// groups and |w| were loaded first, 16 vectors: 27 stack stores and loads per 32 maddubs at 4 tokens;
// this order has none, and is faster at 4 and 64 tokens and in few-row steps of 4 and 8 tokens:
// `test_kernels --bench-gemm 4096 4096 64 Q8_0` 19.0 -> 17.9 ms, EPYC Zen 3, load 3.1-3.2.)
template <int NT>
inline void q8_tile_dots(const TileQ8_0& t, const ActBlock* a, size_t a_stride, __m256i s32[NT]) {
#pragma GCC unroll 8
  for (int g = 0; g < 8; ++g) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.q[g]));
    const __m256i wabs = _mm256_sign_epi8(w, w);
    for (int i = 0; i < NT; ++i) {
      const __m256i p = widen_sum(_mm256_maddubs_epi16(wabs, _mm256_sign_epi8(bcast4(a[i * a_stride].qs + 4 * g), w)));
      s32[i] = g == 0 ? p : _mm256_add_epi32(s32[i], p);
      keep(s32[i]);
    }
  }
}

struct GemmQ8_0 : simd::WeightType<TileQ8_0, TileAcc> {
  template <int NT>
  static void block(const Tile& b, const ActBlock* a, size_t a_stride, Acc* acc) {
    __m256i s32[NT];
    q8_tile_dots<NT>(b, a, a_stride, s32);
    const __m256 dw = load_fp16x8(b.d);
    for (int i = 0; i < NT; ++i)
      acc[i].v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32[i]), _mm256_mul_ps(dw, _mm256_set1_ps(a[i * a_stride].d)),
                                 acc[i].v);
  }
};

// ---- Q6_K: interleaved tiles of 8 rows (kernels.h) ----
//
// Sub-block j (32 weights, activation block a_j) of each row gives one exact integer,
//   S_j = sc_2j * (q . a_j over its first 16 weights - 32 a_j.sum[0]) + sc_2j+1 * (the second 16 ...),
// summed exactly over the super-block, S = S_0 + ... + S_7, then acc = fma(d * da, S, acc), da the
// scale the 8 activation blocks share (kernels.h's act_group). The AVX-512 table computes S exactly
// and takes the same float step, so it gives AVX2's bits; the NEON tables too, in their own order. (The
// generic table takes a float step per sub-block, sa = fma(S_j, a_j.d, sa), then acc = fma(d, sa, acc):
// equal within rounding.)
// Here: group g (4 columns of the 8 rows) of sub-block j unpacked to its unsigned 6-bit quants,
// `maddubs` against 4 activation bytes (pair sums <= 2 * 63 * 127 = 16002: two groups fit int16),
// each two groups' int16 sums widened by `madd` with the half's scale in both int16 halves of the
// row's lane; the offset is one `madd` of the activation's two half sums by 32 * the two scales.

// Group g of sub-block J's quants (0..63), lane r: row r's 4 bytes.
template <int J>
inline __m256i q6_group_quants(const TileQ6_K& t, int g) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.q[J / 2][g]));
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.qh[J / 4][g]));
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const __m256i low = J % 2 ? _mm256_and_si256(_mm256_srli_epi16(v, 4), m4) : _mm256_and_si256(v, m4);
  constexpr int hb = 2 * (J % 4);  // the quant's high bits hb, hb + 1 to bits 4, 5
  const __m256i high = hb <= 4 ? _mm256_slli_epi16(h, 4 - hb) : _mm256_srli_epi16(h, hb - 4);
  return _mm256_or_si256(low, _mm256_and_si256(high, _mm256_set1_epi8(0x30)));
}

inline __m256i q6_scale32(const int8_t* s) {  // the 8 rows' scales s[r] as int32 lanes
  return _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(s)));
}

// Sub-block J of a Q6_K tile for NT tokens: s[i] += S_J (exact).
template <int J, int NT>
inline void q6_sub_block(const TileQ6_K& t, const ActBlock* a, size_t a_stride, __m256i* sum) {
  const __m256i xa = q6_scale32(t.scales[2 * J]), xb = q6_scale32(t.scales[2 * J + 1]);
  // sc in both int16 halves of row r's lane (a `madd` multiplier)
  const __m256i sca = _mm256_blend_epi16(xa, _mm256_slli_epi32(xa, 16), 0xAA);
  const __m256i scb = _mm256_blend_epi16(xb, _mm256_slli_epi32(xb, 16), 0xAA);
  // 32 * sc_2J in the low int16 of row r's lane, 32 * sc_2J+1 in the high (|32 sc| <= 4096)
  const __m256i off = _mm256_blend_epi16(_mm256_slli_epi32(xa, 5), _mm256_slli_epi32(xb, 21), 0xAA);
  __m256i s16[NT], s32[NT];
#pragma GCC unroll 8
  for (int g = 0; g < 8; ++g) {
    const __m256i w = q6_group_quants<J>(t, g);
    for (int i = 0; i < NT; ++i) {
      const __m256i p = _mm256_maddubs_epi16(w, bcast4(a[i * a_stride + J].qs + 4 * g));
      s16[i] = g % 2 == 0 ? p : _mm256_add_epi16(s16[i], p);
      if (g % 2) {
        const __m256i m = _mm256_madd_epi16(s16[i], g < 4 ? sca : scb);
        s32[i] = g == 1 ? m : _mm256_add_epi32(s32[i], m);
      }
      keep(s16[i]);
    }
  }
  for (int i = 0; i < NT; ++i) {
    const ActBlock& aj = a[i * a_stride + J];
    int32_t pair;
    std::memcpy(&pair, aj.sum, 4);
    sum[i] = _mm256_add_epi32(sum[i], _mm256_sub_epi32(s32[i], _mm256_madd_epi16(_mm256_set1_epi32(pair), off)));
  }
}

struct GemmQ6_K : simd::WeightType<TileQ6_K, TileAcc> {
  static constexpr WType kType = WType::Q6_K;
  template <int NT>
  static void block(const Tile& t, const ActBlock* a, size_t a_stride, Acc* acc) {
    __m256i s[NT];  // [token] the super-block's exact sum S of every S_J
    for (int i = 0; i < NT; ++i) s[i] = _mm256_setzero_si256();
    for_const<8>([&](auto j) { q6_sub_block<decltype(j)::value, NT>(t, a, a_stride, s); });
    const __m256 d = load_fp16x8(t.d);  // acc += (d da) S, da the scale the 8 activation blocks share
    for (int i = 0; i < NT; ++i)
      acc[i].v = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(a[i * a_stride].d)), _mm256_cvtepi32_ps(s[i]), acc[i].v);
  }
};

// ---- row-wise super-blocks (Q2_K / Q3_K, kernels_avx2_quants.h): a row's 8 groups of 32 ----

// Scales of group j = 4 * half + p from its half16: int16 element 2p in the low 128 bits, 2p + 1 in
// the high (the scales of the group's two 16-weight halves).
inline __m256i q6_group_scales(__m256i half16, int p) {
  const char a = char(4 * p), b = char(4 * p + 2);  // bytes of int16 elements 2p and 2p + 1
  const __m256i pick = _mm256_setr_epi8(a, a + 1, a, a + 1, a, a + 1, a, a + 1, a, a + 1, a, a + 1, a, a + 1, a,
                                        a + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1, b,
                                        b + 1, b, b + 1);
  return _mm256_shuffle_epi8(half16, pick);
}

// 8 activation blocks' d (times 32) and their 16 half sums, as vectors.
inline void q6_act_gather(const ActBlock* a, __m256* d32, __m256i* sums) {
  *d32 = _mm256_mul_ps(_mm256_setr_ps(a[0].d, a[1].d, a[2].d, a[3].d, a[4].d, a[5].d, a[6].d, a[7].d),
                       _mm256_set1_ps(32.f));
  int32_t s[8];
  for (int j = 0; j < 8; ++j) std::memcpy(&s[j], a[j].sum, 4);
  *sums = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s));
}

// s[j % 4] (+)= a_j.d * (group j's quants q times activation block a_j, by the group's scales sc);
// four short FMA chains instead of one long one, started by j = 0..3.
inline void q6_group(__m256i q, __m256i sc, const ActBlock& a, int j, __m256 s[4]) {
  const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.qs));
  const __m256i s32 = _mm256_madd_epi16(_mm256_maddubs_epi16(q, av), sc);  // pairs <= 16002
  const __m256 f = _mm256_cvtepi32_ps(s32), da = _mm256_set1_ps(a.d);
  s[j % 4] = j < 4 ? _mm256_mul_ps(f, da) : _mm256_fmadd_ps(f, da, s[j % 4]);
}

// ---- float matrices ----

inline __m256 load_w(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load_w(const uint16_t* p) { return load_fp16x8(p); }
inline __m256 load_w(const simd::Bf16* p) {  // 8 BF16: zero-extend to 32 bits, shift into the high half
  const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}

struct GemmFloat {
  // y[i * ldy] = dot(w, x_i) for one F32 / F16 / BF16 row and NT tokens (x_i = x + i * cols): each loaded
  // weight vector serves every token; two FMA chains per token, whatever NT is, so a token's result
  // doesn't depend on the tokens beside it.
  template <int NT, class W>
  static void row(const W* w, int cols, const float* x, float* y, int ldy) {
    __m256 acc[NT][2];
    for (int i = 0; i < NT; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int k = 0; k < cols; k += 16) {  // cols % 32 == 0
      const __m256 w0 = load_w(w + k), w1 = load_w(w + k + 8);
      for (int i = 0; i < NT; ++i) {
        acc[i][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + size_t(i) * cols + k), acc[i][0]);
        acc[i][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + size_t(i) * cols + k + 8), acc[i][1]);
      }
    }
    for (int i = 0; i < NT; ++i) y[size_t(i) * ldy] = hsum(_mm256_add_ps(acc[i][0], acc[i][1]));
  }
};

// ---- attention over one chunk of the paged cache: fp16 K/V converted in registers (F16C) ----

// Lanes [0, n) of an 8-float vector set (n may be <= 0 or >= 8).
inline __m256i lane_mask(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

struct Attention {  // see kernels_simd.h
  using V = __m256;
  static constexpr int W = 8, kRows = 4, kVecs = 2;  // 8 accumulators, 2 loaded vectors, 1 broadcast
  static V zero() { return _mm256_setzero_ps(); }
  static V bcast(const float* x) { return _mm256_broadcast_ss(x); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V load_h(const uint16_t* p) { return load_fp16x8(p); }
  static V load_h(const uint16_t* p, int n) {  // no 16-bit masked load in AVX2: through a zeroed copy
    alignas(16) uint16_t h[8] = {};
    std::memcpy(h, p, sizeof(uint16_t) * n);
    return load_fp16x8(h);
  }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static void store(float* p, V v, int n) { _mm256_maskstore_ps(p, lane_mask(n), v); }
};

void f16_to_f32(const uint16_t* src, float* dst, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_fp16x8(src + i));
  for (; i < n; ++i) dst[i] = fp16_to_fp32(src[i]);
}

void f32_to_f16(const float* src, uint16_t* dst, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; i < n; ++i) dst[i] = fp32_to_fp16(src[i]);
}

}  // namespace
}  // namespace sysinfer
