// AVX-512 kernel table (F, BW, VL and VNNI; this file is compiled with those flags plus AVX2/FMA/F16C,
// and the table is chosen at run time only on CPUs, and under OSes, that have them all). Twin of
// kernels_generic.cpp; the loops over tiles, tokens and blocks are kernels_simd.h's, this file is the
// arithmetic of Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K, activation quantization and attention. What it
// does not redo (float rows, fp16 conversion) is the AVX2 arithmetic of kernels_avx2_impl.h, compiled
// here with these flags, and so are the other K-quant file types (kernels_avx2_quants.h). Q4_K, Q5_K
// and Q6_K are AVX2's arithmetic with VNNI on one tile or two: the same bits as the AVX2 table
// (test_kernels checks it).
//
// Quantized GEMM with VNNI: `vpdpbusd` multiplies 4 unsigned weight bytes by 4 signed activation
// bytes and adds the 4 products to an int32 lane, one instruction where AVX2 needs maddubs + madd
// (and no int16 saturation to keep clear of). An interleaved tile group (kernels.h) holds the same 4
// bytes of 8 rows in 32 bytes, so a 512-bit register holds that group of two consecutive tiles: 16
// rows, each lane its own row's partial dot product, against 4 activation bytes broadcast straight
// from memory ({1to16}). Prefill (Op::pair_block) runs 8 tokens over each unpacked pair of tile
// blocks; a tile left over, and decode's lockstep tiles when odd, take the same arithmetic at 256
// bits (AVX-512VL), lane for lane, so a row's result never depends on which path it took.
//
// Signed weights meet unsigned-times-signed by an offset: Q4 nibbles are 0..15 (the -8 of Q4_0 is
// -8 * sum(a)); Q8_0 weights are made unsigned by w ^ 0x80 = w + 128 (minus 128 * sum(a)). Either
// offset is the activation block's two int16 half sums (ActBlock::sum) added in a general register,
// times the constant, broadcast: it starts the row's int32 chain (block_offset).
//
// What bounds the prefill GEMM on Zen 5 (measured, docs/benchmarks.md): `vpdpbusd` runs on two pipes
// that `vmulps`, `vfmadd` and `vpmaddwd`/`vpdpwssd` also need. Per token, 16 rows and 32 columns, the
// kernel issues 8 `vpdpbusd` and 2 float operations there (dw * da and the fused add, kept as the
// other tables do them); the activation bytes are broadcast inside `vpdpbusd` itself ({1to16}: GCC 12
// does not fold _mm512_set1_epi32 of a load, hence the inline asm) and the offset stays off those pipes.
#include "kernels_avx2_impl.h"
#include "kernels_avx2_quants.h"

// GCC 12's own avx512fintrin.h trips -Wmaybe-uninitialized and, inlined into the K-quant pairs,
// -Wuninitialized (its undefined-vector idiom `__m512 __Y = __Y`).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace sysinfer {
namespace {

// The vector operations the Q4 / Q8 arithmetic needs, for one tile's 8 rows (Rows8: 256-bit lanes)
// or two consecutive tiles' 16 rows (Rows16: 512-bit lanes, tile 0 in the low half).
struct Rows8 {
  using I = __m256i;
  using F = __m256;
  // Group bytes of one tile: 32 bytes at q0 (q1 is the second tile's, unused here).
  static I group(const void* q0, const void*) { return _mm256_loadu_si256(static_cast<const __m256i*>(q0)); }
  static F scales(const uint16_t* d0, const uint16_t*) { return load_fp16x8(d0); }
  // acc + dpbusd(u8, the 4 bytes at p in every lane), the broadcast folded into the instruction
  static I dpbusd_b(I acc, I u8, const void* p) {
    asm("vpdpbusd %2%{1to8%}, %1, %0" : "+v"(acc) : "v"(u8), "m"(*static_cast<const int32_t*>(p)));
    return acc;
  }
  // acc + the int16 pairs of s16 times the two int16s at p, in every lane (`vpdpwssd`, broadcast folded in)
  static I dpwssd_b(I acc, I s16, const void* p) {
    asm("vpdpwssd %2%{1to8%}, %1, %0" : "+v"(acc) : "v"(s16), "m"(*static_cast<const int32_t*>(p)));
    return acc;
  }
  static I dpwssd(I acc, I a, I b) { return _mm256_dpwssd_epi32(acc, a, b); }
  static I set1_8(char v) { return _mm256_set1_epi8(v); }
  static I set1_32(int v) { return _mm256_set1_epi32(v); }
  static I zero() { return _mm256_setzero_si256(); }
  static I add(I a, I b) { return _mm256_add_epi32(a, b); }
  static I and_(I a, I b) { return _mm256_and_si256(a, b); }
  static I xor_(I a, I b) { return _mm256_xor_si256(a, b); }
  static I srl4(I a) { return _mm256_srli_epi16(a, 4); }
  static F cvt(I a) { return _mm256_cvtepi32_ps(a); }
  static F set1(float v) { return _mm256_set1_ps(v); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  // for the K-quants
  static I join(__m256i a, __m256i) { return a; }  // one tile's 8 lanes (the second tile's unused)
  // The 16 bytes at p0 in both 128-bit lanes (p1, the second tile's, unused).
  static I bcast16(const void* p0, const void*) {
    return _mm256_broadcastsi128_si256(_mm_loadu_si128(static_cast<const __m128i*>(p0)));
  }
  static I shuffle8(I a, __m256i idx) { return _mm256_shuffle_epi8(a, idx); }
  static I or_(I a, I b) { return _mm256_or_si256(a, b); }
  template <int N> static I sll16(I a) { return _mm256_slli_epi16(a, N); }
  template <int N> static I srl16(I a) { return _mm256_srli_epi16(a, N); }
  static I madd16(I a, I b) { return _mm256_madd_epi16(a, b); }
  static I mullo(I a, I b) { return _mm256_mullo_epi32(a, b); }
  static I sub(I a, I b) { return _mm256_sub_epi32(a, b); }
  template <int N> static I sll32(I a) { return _mm256_slli_epi32(a, N); }
  static F fnmadd(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }
};

struct Rows16 {
  using I = __m512i;
  using F = __m512;
  // Group bytes of two tiles: 32 at q0 (rows 0-7), 32 at q1 (rows 8-15).
  static I group(const void* q0, const void* q1) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(static_cast<const __m256i*>(q0))),
                              _mm256_loadu_si256(static_cast<const __m256i*>(q1)), 1);
  }
  static F scales(const uint16_t* d0, const uint16_t* d1) {
    const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(d0));
    const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(d1));
    return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1));
  }
  static I dpbusd_b(I acc, I u8, const void* p) {
    asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(u8), "m"(*static_cast<const int32_t*>(p)));
    return acc;
  }
  static I dpwssd_b(I acc, I s16, const void* p) {
    asm("vpdpwssd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(s16), "m"(*static_cast<const int32_t*>(p)));
    return acc;
  }
  static I dpwssd(I acc, I a, I b) { return _mm512_dpwssd_epi32(acc, a, b); }
  static I set1_8(char v) { return _mm512_set1_epi8(v); }
  static I set1_32(int v) { return _mm512_set1_epi32(v); }
  static I zero() { return _mm512_setzero_si512(); }
  static I add(I a, I b) { return _mm512_add_epi32(a, b); }
  static I and_(I a, I b) { return _mm512_and_si512(a, b); }
  static I xor_(I a, I b) { return _mm512_xor_si512(a, b); }
  static I srl4(I a) { return _mm512_srli_epi16(a, 4); }
  static F cvt(I a) { return _mm512_cvtepi32_ps(a); }
  static F set1(float v) { return _mm512_set1_ps(v); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static I join(__m256i a, __m256i b) { return _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1); }
  // The 16 bytes at p0 in 128-bit lanes 0 and 1 (tile 0's rows), those at p1 in lanes 2 and 3.
  static I bcast16(const void* p0, const void* p1) {
    const __m512i a = _mm512_broadcast_i32x4(_mm_loadu_si128(static_cast<const __m128i*>(p0)));
    return _mm512_inserti64x4(a, _mm256_broadcastsi128_si256(_mm_loadu_si128(static_cast<const __m128i*>(p1))), 1);
  }
  // pshufb of each 256-bit half by the same 256-bit indices
  static I shuffle8(I a, __m256i idx) { return _mm512_shuffle_epi8(a, _mm512_broadcast_i64x4(idx)); }
  static I or_(I a, I b) { return _mm512_or_si512(a, b); }
  template <int N> static I sll16(I a) { return _mm512_slli_epi16(a, N); }
  template <int N> static I srl16(I a) { return _mm512_srli_epi16(a, N); }
  static I madd16(I a, I b) { return _mm512_madd_epi16(a, b); }
  static I mullo(I a, I b) { return _mm512_mullo_epi32(a, b); }
  static I sub(I a, I b) { return _mm512_sub_epi32(a, b); }
  template <int N> static I sll32(I a) { return _mm512_slli_epi32(a, N); }
  static F fnmadd(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }
};

// Row sums of two consecutive tiles for one token (simd Pair).
struct PairAcc {
  __m512 v = _mm512_setzero_ps();
  void store(float* y) const { _mm512_storeu_ps(y, v); }
};

// int32 per lane: offset * (a.sum[0] + a.sum[1]), the start of a row's dot-product chain. Computed in
// a general register and broadcast: `vpdpwssd` of the int16 pair would take one of the two pipes that
// run `vpdpbusd`, `vmulps` and `vfmadd` (measured on Zen 5: 4 `vpmaddwd` beside 16 `vpdpbusd` cost
// as much as 5 more `vpdpbusd`), ~7 % of the Q4_0 prefill GEMM.
template <class R>
inline typename R::I block_offset(const ActBlock& a, int offset) {
  return R::set1_32(offset * (int(a.sum[0]) + int(a.sum[1])));
}

// ---- Q4_0 / Q4_1 ----

// One Q4 tile block (or pair) unpacked: lo[g] = columns 4g..4g+3, hi[g] = 16+4g..16+4g+3 (0..15).
template <class R>
struct Q4Nibbles {
  typename R::I lo[4], hi[4];
  Q4Nibbles(const uint8_t (*q0)[8][4], const uint8_t (*q1)[8][4]) {
    const typename R::I m4 = R::set1_8(0x0F);
    for (int g = 0; g < 4; ++g) {
      const typename R::I v = R::group(q0[g], q1 ? q1[g] : nullptr);
      lo[g] = R::and_(v, m4);
      hi[g] = R::and_(R::srl4(v), m4);
    }
  }
  // start + per-row sum of nibble * activation over the block (two chains: low and high nibbles).
  typename R::I dot(const ActBlock& a, typename R::I start) const {
    typename R::I s0 = start, s1 = R::zero();
    for (int g = 0; g < 4; ++g) {
      s0 = R::dpbusd_b(s0, lo[g], a.qs + 4 * g);
      s1 = R::dpbusd_b(s1, hi[g], a.qs + 16 + 4 * g);
    }
    return R::add(s0, s1);
  }
};

// acc[i] += the Q4_0 block (tiles b0, b1: b1 null for one tile) times token i's activation block.
template <class R, int NT, class Acc>
inline void q4_0_blocks(const TileQ4_0& b0, const TileQ4_0* b1, const ActBlock* a, size_t a_stride, Acc* acc) {
  const Q4Nibbles<R> w(b0.q, b1 ? b1->q : nullptr);
  const typename R::F dw = R::scales(b0.d, b1 ? b1->d : nullptr);
  for (int i = 0; i < NT; ++i) {
    const ActBlock& ai = a[i * a_stride];
    const typename R::I dot = w.dot(ai, block_offset<R>(ai, -8));
    acc[i].v = R::fmadd(R::cvt(dot), R::mul(dw, R::set1(ai.d)), acc[i].v);
  }
}

struct VnniQ4_0 : simd::WeightType<TileQ4_0, TileAcc> {  // see kernels_simd.h for what a weight type supplies
  using Pair = PairAcc;
  static constexpr int kTokTile = 8;
  template <int NT>
  static void block(const Tile& b, const ActBlock* a, size_t a_stride, Acc* acc) {
    q4_0_blocks<Rows8, NT>(b, nullptr, a, a_stride, acc);
  }
  template <int NT>
  static void pair_block(const Tile& b0, const Tile& b1, const ActBlock* a, size_t a_stride, Pair* acc) {
    q4_0_blocks<Rows16, NT>(b0, &b1, a, a_stride, acc);
  }
};

// acc[i] += the Q4_1 block (x = d q + m) times token i's activation block.
template <class R, int NT, class Acc>
inline void q4_1_blocks(const TileQ4_1& b0, const TileQ4_1* b1, const ActBlock* a, size_t a_stride, Acc* acc) {
  const Q4Nibbles<R> w(b0.q, b1 ? b1->q : nullptr);
  const typename R::F dw = R::scales(b0.d, b1 ? b1->d : nullptr), mw = R::scales(b0.m, b1 ? b1->m : nullptr);
  for (int i = 0; i < NT; ++i) {
    const ActBlock& ai = a[i * a_stride];
    const typename R::F dot = R::cvt(w.dot(ai, R::zero()));
    acc[i].v = R::fmadd(dot, R::mul(dw, R::set1(ai.d)), acc[i].v);
    acc[i].v = R::fmadd(mw, R::set1(ai.d * float(ai.sum[0] + ai.sum[1])), acc[i].v);
  }
}

struct VnniQ4_1 : simd::WeightType<TileQ4_1, TileAcc> {
  using Pair = PairAcc;
  static constexpr int kTokTile = 8;
  template <int NT>
  static void block(const Tile& b, const ActBlock* a, size_t a_stride, Acc* acc) {
    q4_1_blocks<Rows8, NT>(b, nullptr, a, a_stride, acc);
  }
  template <int NT>
  static void pair_block(const Tile& b0, const Tile& b1, const ActBlock* a, size_t a_stride, Pair* acc) {
    q4_1_blocks<Rows16, NT>(b0, &b1, a, a_stride, acc);
  }
};

// ---- Q8_0 ----

// acc[i] += the Q8_0 block times token i's activation block: weights w + 128 (unsigned), less
// 128 * sum(a); two chains over the 8 groups.
template <class R, int NT, class Acc>
inline void q8_0_blocks(const TileQ8_0& b0, const TileQ8_0* b1, const ActBlock* a, size_t a_stride, Acc* acc) {
  typename R::I u[8];
  const typename R::I flip = R::set1_8(char(0x80));
  for (int g = 0; g < 8; ++g) u[g] = R::xor_(R::group(b0.q[g], b1 ? b1->q[g] : nullptr), flip);
  const typename R::F dw = R::scales(b0.d, b1 ? b1->d : nullptr);
  for (int i = 0; i < NT; ++i) {
    const ActBlock& ai = a[i * a_stride];
    typename R::I s0 = block_offset<R>(ai, -128), s1 = R::zero();
    for (int g = 0; g < 8; g += 2) {
      s0 = R::dpbusd_b(s0, u[g], ai.qs + 4 * g);
      s1 = R::dpbusd_b(s1, u[g + 1], ai.qs + 4 * g + 4);
    }
    acc[i].v = R::fmadd(R::cvt(R::add(s0, s1)), R::mul(dw, R::set1(ai.d)), acc[i].v);
  }
}

struct VnniQ8_0 : simd::WeightType<TileQ8_0, TileAcc> {
  using Pair = PairAcc;
  static constexpr int kTokTile = 8;
  template <int NT>
  static void block(const Tile& b, const ActBlock* a, size_t a_stride, Acc* acc) {
    q8_0_blocks<Rows8, NT>(b, nullptr, a, a_stride, acc);
  }
  template <int NT>
  static void pair_block(const Tile& b0, const Tile& b1, const ActBlock* a, size_t a_stride, Pair* acc) {
    q8_0_blocks<Rows16, NT>(b0, &b1, a, a_stride, acc);
  }
};

// ---- Q4_K / Q5_K: the AVX2 kernels' scheme (kernels_avx2_quants.h) with VNNI, one tile or a pair ----
//
// Per chunk C (sub-blocks 2C, 2C + 1) each group's bytes are loaded once for both sub-blocks, as in
// AVX2, but `vpdpbusd` adds each row's 4 products straight into its int32 lane (AVX2: maddubs + an
// int16 add), and no int16 saturation is near, so Q5_K needs no split sums. The sub-block's dot times
// the row's 6-bit scale (`vpmulld`, once per sub-block and token) is the integer AVX2's madd gives; the
// minimums (one `madd` of two sub-blocks' activation sums by their two minimums) and that product add
// up exactly over the super-block, and the one float step per token is AVX2's k_finish, lane for lane:
// the same bits in both tables. A pair of tiles (Rows16: tile 0 in the low 256 bits) halves every
// instruction per row. The scales are unpacked by KScalesR, for one tile or both of a pair at once.

// The scales and minimums of one tile block's 8 rows (Rows8) or a pair's 16 (Rows16): AVX2's KScales
// (its bytes, its unpacking) on R's registers, so a pair unpacks both tiles in one set of 512-bit
// operations, and each sub-block's multipliers come out of one `pshufb` already in their lanes (with
// AVX2's per tile, then an `and` and a join: the one-token GEMV's pair block, where nothing amortizes
// the scales, went from 429 instructions to 363; `--bench-gemm 4096 14336 64`, 3 alternating runs,
// Intel Xeon: Q4_K 368 -> 383 GOPS, Q5_K 311 -> 324). Each pair is computed where a chunk (or the
// minimums' step) uses it: held through the chunks, the 8 registers made the 8-token pass spill
// (4 alternating runs: Q4_K 364 -> 372, Q5_K 299 -> 310). The same integers: the same bits.
template <class R>
struct KScalesR {
  using I = typename R::I;
  const uint8_t (*s0)[8];
  const uint8_t (*s1)[8];

  KScalesR(const uint8_t (*t0)[8], const uint8_t (*t1)[8]) : s0(t0), s1(t1) {}
  // Sub-blocks 2P, 2P + 1's scales (M: minimums): byte 8 (j % 2) + r of each 128-bit lane, as KScales'
  // sc[P] / mn[P], computed where used so no register holds them through the chunks.
  template <int P, bool M>
  I pair() const {
    constexpr int lo = M ? 4 : 0, p = P % 2;  // the 6-bit bytes: scales 0..3, minimums 4..7
    const I a = R::bcast16(s0[lo + 2 * p], s1[lo + 2 * p]);
    if constexpr (P < 2) {
      return R::and_(a, R::set1_8(0x3F));
    } else {  // the low 4 bits from bytes 8..11 (M: their high nibble), bits 4, 5 from a's top 2
      const I c = R::bcast16(s0[8 + 2 * p], s1[8 + 2 * p]);
      const I low = M ? R::template srl16<4>(c) : c;
      return R::or_(R::and_(low, R::set1_8(0x0F)), R::and_(R::template srl16<2>(a), R::set1_8(0x30)));
    }
  }
  // Sub-block 2P + H's scales from pair<P, false>(): row r's as the int32 of lane r (a `vpdpwssd`
  // multiplier: high int16 0).
  template <int H>
  static I sc32(I pair) { return R::shuffle8(pair, pick<H, false>()); }
  // Sub-block 2P + H's minimums from pair<P, true>(): row r's in both int16 halves of lane r.
  template <int H>
  static I mins16(I pair) { return R::shuffle8(pair, pick<H, true>()); }
  // pshufb indices: int32 lane r (rows 0-3 in the low 128 bits, 4-7 in the high) takes byte 8H + r
  // into its byte 0 (and byte 2 if Both), zeros (index 0x80) elsewhere.
  template <int H, bool Both>
  static __m256i pick() {
    constexpr char z = char(0x80), o = char(8 * H);
    constexpr auto b = [](char i) { return Both ? i : char(0x80); };
    return _mm256_setr_epi8(o, z, b(o), z, char(o + 1), z, b(char(o + 1)), z, char(o + 2), z, b(char(o + 2)), z,
                            char(o + 3), z, b(char(o + 3)), z, char(o + 4), z, b(char(o + 4)), z, char(o + 5), z,
                            b(char(o + 5)), z, char(o + 6), z, b(char(o + 6)), z, char(o + 7), z, b(char(o + 7)), z);
  }
};

// Chunk C (sub-blocks 2C, 2C + 1) for NT tokens: s[i] += sc_2C dot_2C + sc_2C+1 dot_2C+1, per row
// (lane), exact integers (|s| < 2^26).
//
// The scale's product: Q4_K's dot over half a sub-block (4 groups) is at most 16 * 15 * 127 = 30480,
// an int16, so each half's chain is multiplied by the scale and added to s in one `vpdpwssd` (the
// chain's low int16 times the scale, its high int16, 0, times 0), and the chain starts again from 0;
// Q5_K's halves reach 62992, so it keeps a whole sub-block's chain and one `vpmulld` (2 uops on Intel)
// and an add. (The minimums are vk_block's, after the chunks.)
template <class R, bool Q5, int C, int NT, class Tile>
inline void vk_chunk(const Tile& t0, const Tile& t1, const KScalesR<R>& ks, const ActBlock* a,
                     size_t a_stride, typename R::I* s) {
  using I = typename R::I;
  const I m4 = R::set1_8(0x0F);
  const I sc_pair = ks.template pair<C, false>();
  const I sc_lo = KScalesR<R>::template sc32<0>(sc_pair), sc_hi = KScalesR<R>::template sc32<1>(sc_pair);
  I lo[NT], hi[NT];  // [token] int32 dots with sub-blocks 2C / 2C + 1 (Q4_K: their current half), lane: row
#pragma GCC unroll 8
  for (int g = 0; g < 8; ++g) {
    const I v = R::group(t0.q[C][g], t1.q[C][g]);
    I ql = R::and_(v, m4), qh = R::and_(R::srl4(v), m4);
    if constexpr (Q5) {  // bit 2C / 2C + 1 of the row's qh bytes to bit 4
      const I h = R::group(t0.qh[g], t1.qh[g]), bit4 = R::set1_8(0x10);
      constexpr int jl = 2 * C, jh = 2 * C + 1;
      I hl, hh;
      if constexpr (jl <= 4) hl = R::template sll16<4 - jl>(h); else hl = R::template srl16<jl - 4>(h);
      if constexpr (jh <= 4) hh = R::template sll16<4 - jh>(h); else hh = R::template srl16<jh - 4>(h);
      ql = R::or_(ql, R::and_(hl, bit4));
      qh = R::or_(qh, R::and_(hh, bit4));
    }
    const bool first = Q5 ? g == 0 : g % 4 == 0;
    for (int i = 0; i < NT; ++i) {
      const ActBlock* ai = a + i * a_stride + 2 * C;
      lo[i] = R::dpbusd_b(first ? R::zero() : lo[i], ql, ai[0].qs + 4 * g);
      hi[i] = R::dpbusd_b(first ? R::zero() : hi[i], qh, ai[1].qs + 4 * g);
      if (!Q5 && g % 4 == 3) {
        s[i] = R::dpwssd(s[i], lo[i], sc_lo);
        s[i] = R::dpwssd(s[i], hi[i], sc_hi);
      }
    }
  }
  if constexpr (Q5)
    for (int i = 0; i < NT; ++i) s[i] = R::add(s[i], R::add(R::mullo(lo[i], sc_lo), R::mullo(hi[i], sc_hi)));
}

// acc[i] += one Q4_K / Q5_K tile block (t0), or a pair (t0, t1), times token i's 8 activation blocks
// (one scale da for the 8, kernels.h's act_group): kernels_avx2_quants.h's k_finish, lane for lane.
template <class R, bool Q5, int NT, class Tile, class Acc>
inline void vk_block(const Tile& t0, const Tile& t1, const ActBlock* a, size_t a_stride, Acc* acc) {
  using I = typename R::I;
  const KScalesR<R> ks(t0.scales, t1.scales);  // (Rows8: t1's unused)
  I s[NT];
  for (int i = 0; i < NT; ++i) s[i] = R::zero();
  for_const<4>([&](auto c) { vk_chunk<R, Q5, decltype(c)::value, NT>(t0, t1, ks, a, a_stride, s); });
  // The minimums after the quants (no register held through the chunks): M = sum_j mn_j sum a_j.
  I mn[8];
  for_const<4>([&](auto p) {
    const I m = ks.template pair<decltype(p)::value, true>();
    mn[2 * p] = KScalesR<R>::template mins16<0>(m);
    mn[2 * p + 1] = KScalesR<R>::template mins16<1>(m);
  });
  const typename R::F d = R::scales(t0.d, t1.d), dmin = R::scales(t0.dmin, t1.dmin);
  for (int i = 0; i < NT; ++i) {
    I m = R::zero();
    for (int j = 0; j < 8; ++j) m = R::dpwssd_b(m, mn[j], a[i * a_stride + j].sum);
    const typename R::F da = R::set1(a[i * a_stride].d);
    acc[i].v = R::fnmadd(R::mul(dmin, da), R::cvt(m), R::fmadd(R::mul(d, da), R::cvt(s[i]), acc[i].v));
  }
}

template <bool Q5, class TileT, WType T>
struct VnniK : simd::WeightType<TileT, TileAcc> {
  static constexpr WType kType = T;
  static constexpr int kTokTile = 8;  // 8 tokens a pass: 282 GOPS against 4's 236 (Q4_K, Intel Xeon)
  static constexpr int kFewTokTile = simd::kFewRows;
  using Tile = TileT;
  using Acc = TileAcc;
  using Pair = PairAcc;
  template <int NT>
  static void block(const Tile& t, const ActBlock* a, size_t a_stride, Acc* acc) {
    vk_block<Rows8, Q5, NT>(t, t, a, a_stride, acc);
  }
  template <int NT>
  static void pair_block(const Tile& t0, const Tile& t1, const ActBlock* a, size_t a_stride, Pair* acc) {
    vk_block<Rows16, Q5, NT>(t0, t1, a, a_stride, acc);
  }
};
using VnniQ4_K = VnniK<false, TileQ4_K, WType::Q4_K>;
using VnniQ5_K = VnniK<true, TileQ5_K, WType::Q5_K>;

// ---- Q6_K: kernels_avx2_impl.h's S_j and float steps with VNNI, one tile or a pair ----
//
// Each half of sub-block j is one `vpdpbusd` chain per token from -32 * a_j.sum[h] (the offset of the
// unsigned quants), times the half's scale (`vpmulld`): S_j exact, as AVX2's maddubs / madd give it,
// then AVX2's float steps, lane for lane: the same bits in both tables.

// Group g of sub-block J's quants (0..63) of one tile (R::group: or a pair).
template <class R, int J>
inline typename R::I q6_quants(const TileQ6_K& t0, const TileQ6_K& t1, int g) {
  using I = typename R::I;
  const I v = R::group(t0.q[J / 2][g], t1.q[J / 2][g]), h = R::group(t0.qh[J / 4][g], t1.qh[J / 4][g]);
  const I m4 = R::set1_8(0x0F);
  const I low = J % 2 ? R::and_(R::srl4(v), m4) : R::and_(v, m4);
  constexpr int hb = 2 * (J % 4);  // the quant's high bits hb, hb + 1 to bits 4, 5
  I high;
  if constexpr (hb <= 4) high = R::template sll16<4 - hb>(h); else high = R::template srl16<hb - 4>(h);
  return R::or_(low, R::and_(high, R::set1_8(0x30)));
}

// Row r's scales of sub-block J's halves as an int16 pair in lane r (sc_2J low, sc_2J+1 high; |sc| <= 128).
template <class R, int J>
inline typename R::I q6_scale_pair(const TileQ6_K& t0, const TileQ6_K& t1) {
  const auto pair = [](const TileQ6_K& t) {
    return _mm256_blend_epi16(q6_scale32(t.scales[2 * J]), _mm256_slli_epi32(q6_scale32(t.scales[2 * J + 1]), 16), 0xAA);
  };
  return R::join(pair(t0), pair(t1));
}

// Sub-block J for NT tokens: s32[i] += sc_2J dot + sc_2J+1 dot over its halves (the quants unsigned;
// vq6_block takes the offset of 32 after the quants).
template <class R, int J, int NT>
inline void vq6_sub_block(const TileQ6_K& t0, const TileQ6_K& t1, const ActBlock* a, size_t a_stride,
                          typename R::I* s32) {
  using I = typename R::I;
  const I sc[2] = {R::join(q6_scale32(t0.scales[2 * J]), q6_scale32(t1.scales[2 * J])),
                   R::join(q6_scale32(t0.scales[2 * J + 1]), q6_scale32(t1.scales[2 * J + 1]))};
  I dot[NT];  // [token]: the half's chain
#pragma GCC unroll 8
  for (int g = 0; g < 8; ++g) {
    const I w = q6_quants<R, J>(t0, t1, g);
    for (int i = 0; i < NT; ++i) {
      const ActBlock& aj = a[i * a_stride + J];
      dot[i] = R::dpbusd_b(g % 4 == 0 ? R::zero() : dot[i], w, aj.qs + 4 * g);
      if (g % 4 == 3) s32[i] = R::add(s32[i], R::mullo(dot[i], sc[g / 4]));
    }
  }
}

// acc[i] += one Q6_K tile block (t0), or a pair (t0, t1), times token i's 8 activation blocks (one
// scale da for the 8): acc += (d da) S, S = s32 - 32 off the super-block's exact integer sum, where
// off = sum over the 16 halves of sc_h sum a_h: one `vpdpwssd` per sub-block of its two scales (an
// int16 pair) by the activation block's two half sums, broadcast from the block, after the quants (no
// register held through them; within them, a chain start per half took a scalar multiply and a
// broadcast).
template <class R, int NT, class Acc>
inline void vq6_block(const TileQ6_K& t0, const TileQ6_K& t1, const ActBlock* a, size_t a_stride, Acc* acc) {
  using I = typename R::I;
  I s[NT];
  for (int i = 0; i < NT; ++i) s[i] = R::zero();
  for_const<8>([&](auto j) { vq6_sub_block<R, decltype(j)::value, NT>(t0, t1, a, a_stride, s); });
  I pair[8];
  for_const<8>([&](auto j) { pair[j] = q6_scale_pair<R, decltype(j)::value>(t0, t1); });
  const typename R::F d = R::scales(t0.d, t1.d);
  for (int i = 0; i < NT; ++i) {
    I off = R::zero();
    for (int j = 0; j < 8; ++j) off = R::dpwssd_b(off, pair[j], a[i * a_stride + j].sum);
    const I S = R::sub(s[i], R::template sll32<5>(off));
    acc[i].v = R::fmadd(R::mul(d, R::set1(a[i * a_stride].d)), R::cvt(S), acc[i].v);
  }
}

struct VnniQ6_K : simd::WeightType<TileQ6_K, TileAcc> {
  static constexpr WType kType = WType::Q6_K;
  static constexpr int kTokTile = 8;
  using Pair = PairAcc;
  template <int NT>
  static void block(const Tile& t, const ActBlock* a, size_t a_stride, Acc* acc) {
    vq6_block<Rows8, NT>(t, t, a, a_stride, acc);
  }
  template <int NT>
  static void pair_block(const Tile& t0, const Tile& t1, const ActBlock* a, size_t a_stride, Pair* acc) {
    vq6_block<Rows16, NT>(t0, t1, a, a_stride, acc);
  }
};

// ---- attention over one chunk of the paged cache: fp16 K/V converted in registers ----
//
// 16 floats per vector: one `vcvtph2ps` of a 16-token block's keys for dim i, or of 16 dims of a value
// row. Tiles of 6 rows x 4 vectors (24 accumulators: a prefill item's 32 tokens x its GQA group are many
// rows, and each row group converts the keys again; 6 rows measured 3-5 % faster than 4 on a 32-token
// item, `test_kernels --bench-attn hot`). Each output is one FMA chain from 0, as in the
// AVX2 and NEON tables, so all three give the same bits here.
struct Attention512 {  // see kernels_simd.h
  using V = __m512;
  static constexpr int W = 16, kRows = 6, kVecs = 4;
  static __mmask16 mask(int n) { return __mmask16((1u << n) - 1); }
  static V zero() { return _mm512_setzero_ps(); }
  static V bcast(const float* x) { return _mm512_set1_ps(*x); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V load_h(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static V load_h(const uint16_t* p, int n) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask(n), p)); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static void store(float* p, V v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
};

// ---- activations: kernels.h's quantize_act, one 32-value block in two 512-bit registers ----
//
// The same operations as the generic and AVX2 versions (max |x|, d = max / 127, 1 / d, x * (1 / d),
// add copysign(0.5), truncate), so the same bits; the sums of each 16-value half are exact in any
// order. Each half is one register, so its sum is one reduction and its bytes one `vpmovdb`.
void quantize_act512(const float* x, ActBlock* out, int n, int group) {
  const __m512 sign = _mm512_set1_ps(-0.f), half = _mm512_set1_ps(0.5f);
  for (int b0 = 0; b0 < n / QK; b0 += group) {
    __m512 amax = _mm512_setzero_ps();
    for (int i = 0; i < 2 * group; ++i) amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_loadu_ps(x + b0 * QK + 16 * i)));
    const float d = _mm512_reduce_max_ps(amax) / 127.f;
    const __m512 inv = _mm512_set1_ps(d > 0.f ? 1.f / d : 0.f);
    for (int b = b0; b < b0 + group; ++b) {
      ActBlock& o = out[b];
      o.d = d;
      for (int h = 0; h < 2; ++h) {  // trunc(x / d + copysign(0.5, x)): round half away from zero
        const __m512 s = _mm512_mul_ps(_mm512_loadu_ps(x + b * QK + 16 * h), inv);
        // (s & sign) | 0.5 in one ternary-logic operation (0xEA: (A & B) | C)
        const __m512i half_s = _mm512_ternarylogic_epi32(_mm512_castps_si512(s), _mm512_castps_si512(sign),
                                                         _mm512_castps_si512(half), 0xEA);
        const __m512i q = _mm512_cvttps_epi32(_mm512_add_ps(s, _mm512_castsi512_ps(half_s)));
        o.sum[h] = int16_t(_mm512_reduce_add_epi32(q));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(o.qs + 16 * h), _mm512_cvtepi32_epi8(q));  // |q| <= 127
      }
    }
  }
}

constexpr Kernels kAvx512 = simd::table<VnniQ4_0, VnniQ4_1, VnniQ8_0, VnniQ6_K, GemmFloat, Attention512, GemmQ5_0,
                                            GemmQ5_1, VnniQ4_K, VnniQ5_K, GemmIQ4_NL, GemmIQ4_XS, GemmQ2_K, GemmQ3_K>(
    "avx512", quantize_act512, f16_to_f32, f32_to_f16);

}  // namespace

const Kernels* avx512_kernels() { return &kAvx512; }

}  // namespace sysinfer
