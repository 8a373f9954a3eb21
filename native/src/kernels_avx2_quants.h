// AVX2 arithmetic for the types of llama.cpp's K-quant files (issue 23): Q5_0, Q5_1, Q4_K, Q5_K,
// IQ4_NL, IQ4_XS, Q2_K, Q3_K.
// Included after kernels_avx2_impl.h by kernels_avx2.cpp and by kernels_avx512.cpp (the AVX-512
// table runs these 256-bit kernels, but for Q4_K / Q5_K, which it redoes with VNNI).
// Twin of kernels_generic.cpp's decoded form; the loops are kernels_simd.h's.
//
// All four tiles interleave 8 rows (kernels.h), so as for Q4_0 one 32-byte load holds the same 4
// bytes of the 8 rows, `maddubs` against 4 activation bytes broadcast gives each 32-bit lane its own
// row's partial sum, and scales, minimums and fp16 d are 8-lane vectors: no horizontal sums.
#pragma once

#include "kernels_avx2_impl.h"

namespace sysinfer {
namespace {

// ---- Q5_0 / Q5_1: the Q4 tile plus a fifth bit per weight ----

// The 4 groups of low (lo) and high (hi) nibbles of a Q5 tile block with their fifth bits: qh's bit
// 8k + 4h + g (kernels.h's order) is bit 4 of byte k of group g's half h, one shift and mask away.
inline void unpack_q5(const uint8_t (*q)[8][4], const uint8_t (*qh)[4], __m256i lo[4], __m256i hi[4]) {
  const __m256i m4 = _mm256_set1_epi8(0x0F), bit4 = _mm256_set1_epi8(0x10);
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qh));  // lane r: row r's 32 bits
  const __m256i h_lo[4] = {_mm256_slli_epi32(h, 4), _mm256_slli_epi32(h, 3), _mm256_slli_epi32(h, 2),
                           _mm256_slli_epi32(h, 1)};
  const __m256i h_hi[4] = {h, _mm256_srli_epi32(h, 1), _mm256_srli_epi32(h, 2), _mm256_srli_epi32(h, 3)};
  for (int g = 0; g < 4; ++g) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q[g]));
    lo[g] = _mm256_or_si256(_mm256_and_si256(v, m4), _mm256_and_si256(h_lo[g], bit4));
    hi[g] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4), _mm256_and_si256(h_hi[g], bit4));
  }
}

// Per-row int32 dot products of one Q5 tile block (unsigned 0..31) with one activation block.
inline __m256i q5_tile_dot(const __m256i lo[4], const __m256i hi[4], const ActBlock& a) {
  // |each maddubs| <= 2*31*127 = 7874: four fit int16, so the halves widen separately
  __m256i sl = _mm256_maddubs_epi16(lo[0], bcast4(a.qs));
  __m256i sh = _mm256_maddubs_epi16(hi[0], bcast4(a.qs + 16));
  for (int g = 1; g < 4; ++g) {
    sl = _mm256_add_epi16(sl, _mm256_maddubs_epi16(lo[g], bcast4(a.qs + 4 * g)));
    sh = _mm256_add_epi16(sh, _mm256_maddubs_epi16(hi[g], bcast4(a.qs + 16 + 4 * g)));
  }
  const __m256i ones = _mm256_set1_epi16(1);
  return _mm256_add_epi32(_mm256_madd_epi16(sl, ones), _mm256_madd_epi16(sh, ones));
}


// Q5_1's per-row int32 dots of one tile block with NT tokens, group by group (as q4_tile_dots): each
// group's 5-bit quants are unpacked once and meet every token while in registers, so 2 NT int16 sums
// are live rather than all 8 unpacked vectors (at 2 tokens 7 stack stores per 16 maddubs -> none, at
// 4 tokens 8 -> 4 per 32). The same exact integers as q5_tile_dot. Faster at every token count on
// Zen 3: `test_kernels --bench-gemm 4096 4096 TOK Q5_1` 3 tokens 0.854 -> 0.715 ms, 64 tokens 17.08 ->
// 16.63; `--bench-rows Q5_1 3` r=1..8 6-10 % less. Q5_0 keeps q5_tile_dot: there 64 tokens were 2.4 %
// slower (15.31 -> 15.67 ms) though few-row steps gained 4-7 %.
template <int NT>
inline void q5_tile_dots(const uint8_t (*q)[8][4], const uint8_t (*qh)[4], const ActBlock* a, size_t a_stride,
                         __m256i s32[NT]) {
  const __m256i m4 = _mm256_set1_epi8(0x0F), bit4 = _mm256_set1_epi8(0x10);
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qh));  // lane r: row r's 32 bits
  __m256i sl[NT], sh[NT];  // [token]: int16 sums of the low / high nibbles' products
#pragma GCC unroll 4
  for (int g = 0; g < 4; ++g) {  // fifth bits as unpack_q5's: bit 4g + k of qh's byte, to bit 4
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q[g]));
    const __m256i lo = _mm256_or_si256(_mm256_and_si256(v, m4), _mm256_and_si256(_mm256_slli_epi32(h, 4 - g), bit4));
    const __m256i hi =
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4), _mm256_and_si256(_mm256_srli_epi32(h, g), bit4));
    for (int i = 0; i < NT; ++i) {
      const int8_t* qs = a[i * a_stride].qs;
      const __m256i pl = _mm256_maddubs_epi16(lo, bcast4(qs + 4 * g)), ph = _mm256_maddubs_epi16(hi, bcast4(qs + 16 + 4 * g));
      sl[i] = g == 0 ? pl : _mm256_add_epi16(sl[i], pl);
      sh[i] = g == 0 ? ph : _mm256_add_epi16(sh[i], ph);
      keep(sl[i]);
      keep(sh[i]);
    }
  }
  const __m256i ones = _mm256_set1_epi16(1);
  for (int i = 0; i < NT; ++i) s32[i] = _mm256_add_epi32(_mm256_madd_epi16(sl[i], ones), _mm256_madd_epi16(sh[i], ones));
}

struct GemmQ5_0 : simd::WeightType<TileQ5_0, TileAcc> {  // x = d * (q - 16)
  static constexpr WType kType = WType::Q5_0;
  template <int NT>
  static void block(const Tile& b, const ActBlock* a, size_t a_stride, Acc* acc) {
    __m256i lo[4], hi[4];
    unpack_q5(b.q, b.qh, lo, hi);
    const __m256 dw = load_fp16x8(b.d);
    for (int i = 0; i < NT; ++i) {
      const ActBlock& ai = a[i * a_stride];
      const __m256i dot = _mm256_sub_epi32(q5_tile_dot(lo, hi, ai), _mm256_set1_epi32(16 * (ai.sum[0] + ai.sum[1])));
      acc[i].v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw, _mm256_set1_ps(ai.d)), acc[i].v);
    }
  }
};

struct GemmQ5_1 : simd::WeightType<TileQ5_1, TileAcc> {  // x = d * q + m
  static constexpr WType kType = WType::Q5_1;
  template <int NT>
  static void block(const Tile& b, const ActBlock* a, size_t a_stride, Acc* acc) {
    __m256i s32[NT];
    q5_tile_dots<NT>(b.q, b.qh, a, a_stride, s32);
    const __m256 dw = load_fp16x8(b.d), mw = load_fp16x8(b.m);
    for (int i = 0; i < NT; ++i) {
      const ActBlock& ai = a[i * a_stride];
      const __m256 dot = _mm256_cvtepi32_ps(s32[i]);
      acc[i].v = _mm256_fmadd_ps(dot, _mm256_mul_ps(dw, _mm256_set1_ps(ai.d)), acc[i].v);
      acc[i].v = _mm256_fmadd_ps(mw, _mm256_set1_ps(ai.d * float(ai.sum[0] + ai.sum[1])), acc[i].v);
    }
  }
};

// ---- Q4_K / Q5_K: 256-weight super-blocks of 8 sub-blocks, 6-bit scales and minimums ----
//
// Per sub-block j (32 weights, activation block j) and row: the int32 dot of the quants with a_j
// times the row's scale sc_j (one `madd` against sc_j in both int16 halves of the row's lane) into S,
// the minimum by the activation's sum, m_j * sum a_j, into M, both exact integers over the
// super-block; then acc += (d da) S - (dmin da) M, one float step per super-block and token. That
// needs the 8 activation blocks to share their scale da (kernels.h's act_group: the model quantizes
// these matrices' inputs so, llama.cpp's Q8_K in our ActBlock layout). With a scale per block, the
// float steps per sub-block cost as much as the products: 130 -> 155 GOPS here, 224 -> 291 in the
// AVX-512 table (Q4_K, `test_kernels --bench-gemm 4096 14336 64 Q4_K`, Intel Xeon, one thread).
//
// Speed (one thread, `test_kernels --bench-gemm 256 4096 1 Q4_K`, in L2: the arithmetic alone): the
// 32 bytes of a chunk c are loaded once for both its sub-blocks (2c: low nibbles, 2c + 1: high), the
// chunk index a compile-time constant (Q5_K's fifth-bit shifts are immediates), and the 12-byte
// scales of the 8 rows are unpacked once per super-block in vector registers (KScales), each
// sub-block's scale and minimum one `pshufb` away, instead of scalar words moved to vectors one by
// one per sub-block.

// The scales and minimums of one tile block's 8 rows: sc[j / 2] / mn[j / 2] hold, at byte
// 8 * (j % 2) + r, row r's scale / minimum of sub-block j, the same 16 bytes in both 128-bit lanes
// (kernels.h: scales[b][r]).
struct KScales {
  __m256i sc[8 / 2], mn[8 / 2];  // [pair of sub-blocks (j / 2)]

  explicit KScales(const uint8_t (*s)[8]) {
    const __m256i low6 = _mm256_set1_epi8(0x3F), low4 = _mm256_set1_epi8(0x0F), bits45 = _mm256_set1_epi8(0x30);
    for (int p = 0; p < 2; ++p) {  // bytes b = 2p, 2p + 1 of the 12 (and b + 4, b + 8): sub-blocks 2p, 2p + 1 and 4 + 2p, 5 + 2p
      const __m256i a = bcast16(s[2 * p]), b = bcast16(s[4 + 2 * p]), c = bcast16(s[8 + 2 * p]);
      sc[p] = _mm256_and_si256(a, low6);
      mn[p] = _mm256_and_si256(b, low6);
      // sub-blocks 4..7: the low 4 bits from bytes 8..11, bits 4, 5 from the top 2 bits of bytes 0..7
      sc[2 + p] = _mm256_or_si256(_mm256_and_si256(c, low4), _mm256_and_si256(_mm256_srli_epi16(a, 2), bits45));
      mn[2 + p] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(c, 4), low4),
                                  _mm256_and_si256(_mm256_srli_epi16(b, 2), bits45));
    }
  }
  static __m256i bcast16(const uint8_t* p) {
    return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  // Sub-block J's scales, row r's in both int16 halves of lane r (a `madd` multiplier).
  template <int J>
  __m256i pair16() const { return _mm256_shuffle_epi8(sc[J / 2], pick<J % 2>()); }
  // Sub-block J's minimums, the same way.
  template <int J>
  __m256i mins16() const { return _mm256_shuffle_epi8(mn[J / 2], pick<J % 2>()); }
  // pshufb indices: int32 lane r (rows 0-3 in the low 128 bits, 4-7 in the high) takes byte 8H + r
  // into its bytes 0 and 2, zeros (index 0x80) into bytes 1 and 3.
  template <int H>
  static __m256i pick() {
    constexpr char z = char(0x80), o = char(8 * H);
    return _mm256_setr_epi8(o, z, o, z, char(o + 1), z, char(o + 1), z, char(o + 2), z, char(o + 2), z, char(o + 3), z,
                            char(o + 3), z, char(o + 4), z, char(o + 4), z, char(o + 5), z, char(o + 5), z, char(o + 6),
                            z, char(o + 6), z, char(o + 7), z, char(o + 7), z);
  }
};

inline __m256i bytes_to_i32(uint64_t w) { return _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(int64_t(w))); }


// The K-quant tail of sub-block J for NT tokens, given token i's int32 dot of the quants with a_J by
// the row scales, s32(i): s[i] += s32 and m[i] += mn_J * sum a_J, exact integers (|s| < 2^26, the
// minimum's product from one `madd` of the activation's two half sums, broadcast as one 32-bit word,
// by mn_J in both int16 halves).
template <int J, int NT, class Dot>
inline void k_sub_block(const KScales& ks, const ActBlock* a, size_t a_stride, const Dot& s32, __m256i* s,
                        __m256i* m) {
  const __m256i mn = ks.mins16<J>();
  for (int i = 0; i < NT; ++i) {
    int32_t pair;
    std::memcpy(&pair, a[i * a_stride + J].sum, 4);
    s[i] = _mm256_add_epi32(s[i], s32(i));
    m[i] = _mm256_add_epi32(m[i], _mm256_madd_epi16(_mm256_set1_epi32(pair), mn));
  }
}

// acc[i] += (d da) S - (dmin da) M: the super-block's one float step per token, da the scale its 8
// activation blocks share (kernels.h's act_group).
template <int NT, class Tile>
inline void k_finish(const Tile& t, const ActBlock* a, size_t a_stride, const __m256i* s, const __m256i* m,
                     TileAcc* acc) {
  const __m256 d = load_fp16x8(t.d), dmin = load_fp16x8(t.dmin);
  for (int i = 0; i < NT; ++i) {
    const __m256 da = _mm256_set1_ps(a[i * a_stride].d);
    acc[i].v = _mm256_fnmadd_ps(_mm256_mul_ps(dmin, da), _mm256_cvtepi32_ps(m[i]),
                                _mm256_fmadd_ps(_mm256_mul_ps(d, da), _mm256_cvtepi32_ps(s[i]), acc[i].v));
  }
}

// Chunk C of a Q4_K / Q5_K tile block (sub-blocks 2C and 2C + 1) for NT tokens: group g's 32 bytes
// (4 bytes of each of the 8 rows) loaded once, low nibbles against a_2C, high against a_2C+1, with
// Q5_K's fifth bits (bit 2C / 2C + 1 of the row's qh bytes, to bit 4) when Q5. Int16 pair sums:
// |each maddubs| <= 2 * 15 * 127 = 3810 (Q4: 8 fit int16) or 2 * 31 * 127 = 7874 (Q5: groups 0-3
// and 4-7 summed apart, then widened by the scale's madd each).
template <bool Q5, int C, int NT, class Tile>
inline void k_chunk(const Tile& t, const KScales& ks, const ActBlock* a, size_t a_stride, __m256i* sa, __m256i* sm) {
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  constexpr int H = Q5 ? 2 : 1;  // int16 sums per sub-block and token
  __m256i lo[H][NT], hi[H][NT];
  // Fully unrolled: GCC 12 left this loop rolled from 3 tokens up (and for Q5_K from 2), and the
  // int16 sums, indexed by a run-time g, lived on the stack: a load, add and store per maddubs.
  // Unrolled, they stay in registers through the chunk (the spills move to the chunk's tail).
#pragma GCC unroll 8
  for (int g = 0; g < 8; ++g) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.q[C][g]));
    __m256i ql = _mm256_and_si256(v, m4), qh = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
    if constexpr (Q5) {
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.qh[g])), bit4 = _mm256_set1_epi8(0x10);
      constexpr int jl = 2 * C, jh = 2 * C + 1;  // bit j of h to bit 4
      const __m256i hl = jl <= 4 ? _mm256_slli_epi16(h, 4 - jl) : _mm256_srli_epi16(h, jl - 4);
      const __m256i hh = jh <= 4 ? _mm256_slli_epi16(h, 4 - jh) : _mm256_srli_epi16(h, jh - 4);
      ql = _mm256_or_si256(ql, _mm256_and_si256(hl, bit4));
      qh = _mm256_or_si256(qh, _mm256_and_si256(hh, bit4));
    }
    const int k = Q5 ? g / 4 : 0, first = Q5 ? g % 4 == 0 : g == 0;
    for (int i = 0; i < NT; ++i) {
      const ActBlock* ai = a + i * a_stride + 2 * C;
      const __m256i pl = _mm256_maddubs_epi16(ql, bcast4(ai[0].qs + 4 * g));
      const __m256i ph = _mm256_maddubs_epi16(qh, bcast4(ai[1].qs + 4 * g));
      lo[k][i] = first ? pl : _mm256_add_epi16(lo[k][i], pl);
      hi[k][i] = first ? ph : _mm256_add_epi16(hi[k][i], ph);
      keep(lo[k][i]);
      keep(hi[k][i]);
    }
  }
  constexpr int J = 2 * C;
  const __m256i scl = ks.pair16<J>(), sch = ks.pair16<J + 1>();
  if constexpr (Q5) {  // each half widened by the scale's madd, then added as int32
    k_sub_block<J, NT>(ks, a, a_stride, [&](int i) {
      return _mm256_add_epi32(_mm256_madd_epi16(lo[0][i], scl), _mm256_madd_epi16(lo[1][i], scl)); }, sa, sm);
    k_sub_block<J + 1, NT>(ks, a, a_stride, [&](int i) {
      return _mm256_add_epi32(_mm256_madd_epi16(hi[0][i], sch), _mm256_madd_epi16(hi[1][i], sch)); }, sa, sm);
  } else {
    k_sub_block<J, NT>(ks, a, a_stride, [&](int i) { return _mm256_madd_epi16(lo[0][i], scl); }, sa, sm);
    k_sub_block<J + 1, NT>(ks, a, a_stride, [&](int i) { return _mm256_madd_epi16(hi[0][i], sch); }, sa, sm);
  }
}

template <bool Q5, int NT, class Tile>
inline void k_block(const Tile& t, const ActBlock* a, size_t a_stride, TileAcc* acc) {
  const KScales ks(t.scales);
  __m256i s[NT], m[NT];  // [token] the super-block's exact sums: scales x dots, minimums x activation sums
  for (int i = 0; i < NT; ++i) s[i] = m[i] = _mm256_setzero_si256();
  for_const<4>([&](auto c) { k_chunk<Q5, decltype(c)::value, NT>(t, ks, a, a_stride, s, m); });
  k_finish<NT>(t, a, a_stride, s, m, acc);
}

struct GemmQ4_K : simd::WeightType<TileQ4_K, TileAcc> {
  static constexpr WType kType = WType::Q4_K;
  template <int NT>
  static void block(const Tile& t, const ActBlock* a, size_t a_stride, Acc* acc) {
    k_block<false, NT>(t, a, a_stride, acc);
  }
};

struct GemmQ5_K : simd::WeightType<TileQ5_K, TileAcc> {
  static constexpr WType kType = WType::Q5_K;
  template <int NT>
  static void block(const Tile& t, const ActBlock* a, size_t a_stride, Acc* acc) {
    k_block<true, NT>(t, a, a_stride, acc);
  }
};

// ---- IQ4_NL / IQ4_XS: 4-bit indices into a 16-entry signed code book (kIQ4NL) ----
//
// `pshufb` looks the 16 levels up for 32 nibbles at once; the levels are signed (-127..113), so as
// for Q8_0 `maddubs` takes |w| and the activation carries w's sign. A pair reaches 2 * 127 * 127,
// so each `maddubs` is widened to int32 before it is added. Exact integers.

inline __m256i iq4_levels() {
  return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIQ4NL)));
}

// Per-row int32 dots of one IQ4 tile block (the Q4_0 layout: 4 groups of 8 rows x 4 bytes, low
// nibbles elements 4g + k, high 16 + 4g + k) with NT tokens' activation blocks (a[i * a_stride]).
template <int NT>
inline void iq4_tile_dots(const uint8_t (*q)[8][4], const ActBlock* a, size_t a_stride, __m256i s32[NT]) {
  const __m256i m4 = _mm256_set1_epi8(0x0F), levels = iq4_levels();
  for (int g = 0; g < 4; ++g) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q[g]));
    const __m256i wl = _mm256_shuffle_epi8(levels, _mm256_and_si256(v, m4));
    const __m256i wh = _mm256_shuffle_epi8(levels, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
    const __m256i al = _mm256_sign_epi8(wl, wl), ah = _mm256_sign_epi8(wh, wh);
    for (int i = 0; i < NT; ++i) {
      const int8_t* qs = a[i * a_stride].qs;
      const __m256i p = _mm256_add_epi32(widen_sum(_mm256_maddubs_epi16(al, _mm256_sign_epi8(bcast4(qs + 4 * g), wl))),
                                         widen_sum(_mm256_maddubs_epi16(ah, _mm256_sign_epi8(bcast4(qs + 16 + 4 * g), wh))));
      s32[i] = g == 0 ? p : _mm256_add_epi32(s32[i], p);
      keep(s32[i]);
    }
  }
}

struct GemmIQ4_NL : simd::WeightType<TileIQ4_NL, TileAcc> {  // x = d * kIQ4NL[q]
  static constexpr WType kType = WType::IQ4_NL;
  template <int NT>
  static void block(const Tile& b, const ActBlock* a, size_t a_stride, Acc* acc) {
    __m256i s32[NT];
    iq4_tile_dots<NT>(b.q, a, a_stride, s32);
    const __m256 dw = load_fp16x8(b.d);
    for (int i = 0; i < NT; ++i)
      acc[i].v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32[i]), _mm256_mul_ps(dw, _mm256_set1_ps(a[i * a_stride].d)), acc[i].v);
  }
};

// IQ4_XS: 8 IQ4_NL-shaped sub-blocks with 6-bit scales ls_j - 32 (kernels.h), for each token
// sa += a_j.d * (sc_j * dot_j) (the int product exact, as the generic kernel's), then acc += d * sa.
struct GemmIQ4_XS : simd::WeightType<TileIQ4_XS, TileAcc> {
  static constexpr WType kType = WType::IQ4_XS;
  template <int NT>
  static void block(const Tile& t, const ActBlock* a, size_t a_stride, Acc* acc) {
    uint64_t lo_words[4];
    std::memcpy(lo_words, t.scales_l, sizeof lo_words);  // word j / 2: byte r is row r's scales_l[j / 2]
    const __m256i hi = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t.scales_h)));
    const __m256i m4 = _mm256_set1_epi32(15), m2 = _mm256_set1_epi32(3), bias = _mm256_set1_epi32(32);
    __m256 sa[NT];
    for (int i = 0; i < NT; ++i) sa[i] = _mm256_setzero_ps();
    for (int j = 0; j < 8; ++j) {
      const __m256i l4 = _mm256_and_si256(_mm256_srli_epi32(bytes_to_i32(lo_words[j / 2]), 4 * (j % 2)), m4);
      const __m256i h2 = _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(hi, 2 * j), m2), 4);
      const __m256i sc = _mm256_sub_epi32(_mm256_or_si256(l4, h2), bias);
      __m256i s32[NT];
      iq4_tile_dots<NT>(t.q[j], a + j, a_stride, s32);
      for (int i = 0; i < NT; ++i)
        sa[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_mullo_epi32(s32[i], sc)), _mm256_set1_ps(a[i * a_stride + j].d),
                                sa[i]);
    }
    const __m256 d = load_fp16x8(t.d);
    for (int i = 0; i < NT; ++i) acc[i].v = _mm256_fmadd_ps(d, sa[i], acc[i].v);
  }
};

// ---- Q2_K / Q3_K: rows are whole super-blocks (not interleaved) ----
//
// Group j = 4n + s of a row's block (32 weights, activation block j) holds (qs[32n + l] >> 2s) & 3,
// with Q3_K's hmask bit j of byte l as bit 2: unsigned u, 0..3 or 0..7 (Q3_K's q = u - 4). Then
// the row-wise super-block arithmetic of kernels_avx2_impl.h (q6_group: maddubs, madd by the group's two 16-weight scales, by a_j.d
// into four float chains), with once per super-block Q3_K's offset (4 * sc by the activation half
// sums) or Q2_K's minimums (dmin * mn by the half sums). Lanes summed once at the end (RowSums).

// Group j's unsigned quants (hm: Q3_K's 32 hmask bytes).
template <bool Q3>
inline __m256i q23_group(const uint8_t* qs, __m256i hm, int j) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * (j / 4)));
  __m256i u = _mm256_and_si256(_mm256_srli_epi16(v, 2 * (j % 4)), _mm256_set1_epi8(3));
  if constexpr (Q3) {  // bit j of each hmask byte -> bit 2
    const __m256i hb = j <= 2 ? _mm256_slli_epi16(hm, 2 - j) : _mm256_srli_epi16(hm, j - 2);
    u = _mm256_or_si256(u, _mm256_and_si256(hb, _mm256_set1_epi8(4)));
  }
  return u;
}

// Q3_K's 16 scales s_i - 32 (kernels.h's packing: low 4 bits in bytes 0-7, high 2 in bytes 8-11) as
// int16, unpacked on 64-bit words: byte i of lo / hi is scale i / 8 + i.
inline __m256i q3_scales16(const uint8_t* s) {
  uint64_t w;
  uint32_t h;
  std::memcpy(&w, s, 8);
  std::memcpy(&h, s + 8, 4);
  const uint64_t m4 = 0x0F0F0F0F0F0F0F0Full;
  const uint32_t m2 = 0x03030303u;
  const uint64_t hlo = (h & m2) | uint64_t((h >> 2) & m2) << 32, hhi = ((h >> 4) & m2) | uint64_t((h >> 6) & m2) << 32;
  const __m128i b = _mm_set_epi64x(int64_t(((w >> 4) & m4) | (hhi << 4)), int64_t((w & m4) | (hlo << 4)));
  return _mm256_cvtepi8_epi16(_mm_sub_epi8(b, _mm_set1_epi8(32)));
}

// acc (lanes of one row) += one Q2_K / Q3_K super-block (quants qs / hmask, int16 scales sc16 and
// Q2_K's minimums mn16) times 8 activation blocks a (their d and half sums gathered in ad / asum).
template <bool Q3>
inline __m256 q23_row(const uint8_t* qs, const uint8_t* hmask, __m256i sc16, __m256i mn16, float d, float dmin,
                      const ActBlock* a, __m256 ad, __m256i asum, __m256 acc) {
  const __m256i half16[2] = {_mm256_permute4x64_epi64(sc16, 0x44), _mm256_permute4x64_epi64(sc16, 0xEE)};
  const __m256i hm = Q3 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(hmask)) : _mm256_setzero_si256();
  __m256 s[4];
  for (int j = 0; j < 8; ++j) q6_group(q23_group<Q3>(qs, hm, j), q6_group_scales(half16[j / 4], j % 4), a[j], j, s);
  const __m256 sum = _mm256_add_ps(_mm256_add_ps(s[0], s[1]), _mm256_add_ps(s[2], s[3]));
  if constexpr (Q3) {  // q = u - 4
    const __m256 off = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(sc16, asum)), _mm256_mul_ps(ad, _mm256_set1_ps(4.f)));
    return _mm256_fmadd_ps(_mm256_sub_ps(sum, off), _mm256_set1_ps(d), acc);
  }
  const __m256 mins = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(mn16, asum)), ad);
  return _mm256_fnmadd_ps(mins, _mm256_set1_ps(dmin), _mm256_fmadd_ps(sum, _mm256_set1_ps(d), acc));
}

// The 8 activation blocks' d as a vector and their 16 half sums (q6_act_gather's, without the 32).
inline void q23_act_gather(const ActBlock* a, __m256* ad, __m256i* asum) {
  q6_act_gather(a, ad, asum);
  *ad = _mm256_mul_ps(*ad, _mm256_set1_ps(1.f / 32));  // exact: a power of two
}

struct GemmQ2_K : simd::WeightType<TileQ2_K, simd::RowSums<F32x8>> {  // x = d * sc * q - dmin * mn
  static constexpr WType kType = WType::Q2_K;
  template <int NT>
  static void block(const Tile& t, const ActBlock* a, size_t a_stride, Acc* acc) {
    __m256 ad[NT];
    __m256i asum[NT];
    for (int i = 0; i < NT; ++i) q23_act_gather(a + i * a_stride, &ad[i], &asum[i]);
    for (int r = 0; r < ROW_TILE; ++r) {
      const BlockQ2_K& b = t.b[r];
      const __m128i s = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.scales));
      const __m256i sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(s, _mm_set1_epi8(0x0F)));
      const __m256i mn16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s, 4), _mm_set1_epi8(0x0F)));
      const float d = _cvtsh_ss(b.d), dmin = _cvtsh_ss(b.dmin);
      for (int i = 0; i < NT; ++i)
        acc[i].r[r] = q23_row<false>(b.qs, nullptr, sc16, mn16, d, dmin, a + i * a_stride, ad[i], asum[i], acc[i].r[r]);
    }
  }
};

struct GemmQ3_K : simd::WeightType<TileQ3_K, simd::RowSums<F32x8>> {  // x = d * (s - 32) * (u - 4)
  static constexpr WType kType = WType::Q3_K;
  template <int NT>
  static void block(const Tile& t, const ActBlock* a, size_t a_stride, Acc* acc) {
    __m256 ad[NT];
    __m256i asum[NT];
    for (int i = 0; i < NT; ++i) q23_act_gather(a + i * a_stride, &ad[i], &asum[i]);
    for (int r = 0; r < ROW_TILE; ++r) {
      const BlockQ3_K& b = t.b[r];
      const __m256i sc16 = q3_scales16(b.scales);
      const float d = _cvtsh_ss(b.d);
      for (int i = 0; i < NT; ++i)
        acc[i].r[r] = q23_row<true>(b.qs, b.hmask, sc16, sc16, d, 0.f, a + i * a_stride, ad[i], asum[i], acc[i].r[r]);
    }
  }
};

}  // namespace
}  // namespace sysinfer
