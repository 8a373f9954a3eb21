// The skeleton every SIMD kernel table shares: how a matmul walks tiles, tokens and blocks, how a
// one-token GEMV walks several tiles side by side, and how a run-time count picks a template
// instance. A table (kernels_avx2.cpp, kernels_neon_impl.h) supplies only its arithmetic:
//
//   one struct per quantized weight type (Q4_0, Q4_1, Q8_0, Q6_K), derived from WeightType<Tile, Acc>:
//       Tile = TileQ4_0 ...;             the packed tile block (8 rows x one block column)
//       Acc;                             one token's 8 row sums so far; Acc{} is all zeros;
//                                        acc.store(y) writes them to y[0..8)
//     with
//       template <int NT> static void block(const Tile& b, const ActBlock* a, size_t a_stride, Acc* acc);
//                                        acc[i] += b times token i's activation blocks at
//                                        a + i * a_stride (act_blocks<Tile> of them), for i < NT, NT in
//                                        1..kTokTile; token i's result must not depend on NT (a sequence
//                                        decoded alone gets the logits it gets in a batch or a verify
//                                        step); the skeleton may call it for the same b several times in
//                                        a row, once per group of tokens (b is then in L1)
//     and optionally, for tables whose vectors hold two tiles' rows (AVX-512: 16 int32 lanes),
//       using Pair;                      two consecutive tiles' 16 row sums for one token; Pair{} is
//                                        zeros, acc.store(y) writes y[0..16)
//       template <int NT> static void pair_block(const Tile& b0, const Tile& b1, const ActBlock* a,
//                                                size_t a_stride, Pair* acc);
//                                        block<NT> for tiles b0 and b1 at once (rows 0-7 | 8-15); a row's
//                                        result must not depend on whether its tile went alone or in a pair
//       static constexpr int kTokTile;   tokens per pass over a tile block (default simd::kTokTile)
//       static constexpr int kFewTokTile;  the same in a step of 2..kFewRows tokens (default kTokTile):
//                                        block<NT> / pair_block<NT> then take NT up to the larger of the two
//   one struct for F32 / F16 / BF16 rows, with
//       template <int NT, class W> static void row(const W* w, int cols, const float* x, float* y, int ldy);
//                                        y[i * ldy] = dot(w, x + i * cols) for i < NT, one F32 (W = float),
//                                        F16 (W = uint16_t) or BF16 (W = simd::Bf16) row; token i's result
//                                        must not depend on NT
//   one struct for attention (see attn_scores below): W-float vectors V and how fp16 values load into
//   them, with
//       static constexpr int W, kRows, kVecs;   lanes; a tile is kRows query rows x kVecs vectors
//       static V zero();  static V bcast(const float* x);  static V fma(V a, V b, V c);  (a * b + c, fused)
//       static V load_h(const uint16_t* p);         W fp16 values at p, converted in registers
//       static V load_h(const uint16_t* p, int n);  n < W of them, the other lanes 0 (reads only n)
//       static void store(float* p, V v);  static void store(float* p, V v, int n);  (all W lanes, or n)
//   quantize_act, f16_to_f32, f32_to_f16 as kernels.h defines them,
//
// and simd::table<Q4_0, Q4_1, Q8_0, Q6_K, Float, Attention, Extra...>(name, quantize_act, ...) makes
// its Kernels. A new table (AVX-512, SVE) writes those structs and functions, nothing else. Extra:
// weight types beyond those four (Q5_0, Q4_K, ...), each a struct as above (Tile, Acc, block<NT>;
// optionally Pair, pair_block<NT>, kTokTile) that also names its type (static constexpr WType kType),
// listed after Attention: it gets every walk here (decode, few rows, prefill) unchanged; a type a table
// has no struct for runs the generic kernel (the same results, slower).
//
// The walks over one matrix (gemm_quantized), by the step's token count n:
//   n = 1         decode: kGemvStreams tiles side by side, each stream prefetched ahead (few_rows<1>);
//   2 <= n <= 8   a few-row step (decode of a small batch, a speculative verify, a draft's catch-up):
//                 the same streaming walk, each tile block loaded once and used by all n tokens, token
//                 groups of kTokTile (few_rows<n>): its weights stream from DRAM once, as decode's do;
//   n > 8         prefill: each tile (or pair) for kTokTile tokens at a time (tile_tokens, pair_tokens).
// Every walk computes a row's sum for a token as the same chain of block<NT> calls in block order, so
// results are the same bits whatever n (native/tests/test_kernels.cpp checks every table and, with a
// plain C++ weight type, every walk: the AVX-512 table's pair walk included).
//
// Which table runs is chosen once, at run time, from the CPU's features (select_kernels); every
// ISA-specific line is in a file compiled with its ISA's flags. That is the only way ISA code is
// chosen: no target_clones, no per-function target attributes. softmax (below) is one source that
// every table, the generic one included, compiles with its own flags.
//
// Everything here has internal linkage (unnamed namespace): each table's file compiles its own copy
// with its own ISA flags, and the linker must never keep one file's copy of an inline function (say,
// built with -mavx2) for a file built without.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels.h"

namespace sysinfer {
namespace {

// ---- softmax weights: the same source in every table, compiled with each table's flags ----
//
// Compiled without floating-point contraction (every a * b + c rounds twice, as written), so the
// weights are the same bits in every table: the choice of table moves no softmax weight, and they are
// the bits attention.cpp computed before this entry existed (its haswell target_clones copy ran only
// on CPUs that __builtin_cpu_is("haswell"), so everywhere else the code without FMA ran). With FMA
// contraction 10% of e^x values moved by an ulp, and that alone moved SmolLM2's greedy text off the
// numpy reference at a 0.2-logit margin (tests/native/test_forward.py).
#if defined(__clang__)
#define SYSINFER_AS_WRITTEN _Pragma("STDC FP_CONTRACT OFF")
#else
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#define SYSINFER_AS_WRITTEN
#endif

// e^x for x <= 0 (softmax weights), vectorisable: 2^n * p(r) with x = n ln2 + r, |r| <= ln2 / 2,
// p a degree-6 Taylor polynomial (relative error < 2e-7 before float rounding; test_kernels holds
// every table within 3e-7 of e^x); x is clamped at -87 (e^-87 ~ 1.6e-38).
inline float exp_nonpositive(float x) {
  SYSINFER_AS_WRITTEN
  x = x < -87.f ? -87.f : x;
  const float shifter = 12582912.f;  // 1.5 * 2^23: adding it rounds to an integer (vectorisable)
  const float n = (x * 1.44269504f + shifter) - shifter;
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
  float p = 1.f / 720;
  p = p * r + 1.f / 120;
  p = p * r + 1.f / 24;
  p = p * r + 1.f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t bits = (int32_t(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

// Kernels::softmax. Each loop is vectorised at each table's width without changing a bit: the max is
// exact in any order; the exponentials are element-wise; and the sum is 16 separate chains (lane l
// adds keys l, l + 16, ...) halved pairwise at the end, which a vector of 4, 8 or 16 lanes computes
// exactly as written. (One long chain in key order cost ~3 cycles a key: as much as the scores and
// the accumulation of a 4-row GQA group together.) Files are compiled with -fopenmp-simd (`omp simd`
// without the OpenMP runtime) and -fno-trapping-math (without it GCC 12 keeps exp_nonpositive's
// clamp as a branch and vectorises nothing: "control flow in loop").
float softmax(float* p, int n, float* max) {
  SYSINFER_AS_WRITTEN
  constexpr int L = 16;  // partial maxima and sums
  const int whole = n / L * L;
  float m[L], s[L];
  for (int l = 0; l < L; ++l) m[l] = p[0];
  for (int j = 0; j < whole; j += L)
    for (int l = 0; l < L; ++l) m[l] = p[j + l] > m[l] ? p[j + l] : m[l];
  for (int j = whole; j < n; ++j) m[j - whole] = p[j] > m[j - whole] ? p[j] : m[j - whole];
  float mx = m[0];
  for (int l = 1; l < L; ++l) mx = m[l] > mx ? m[l] : mx;
#pragma omp simd
  for (int j = 0; j < n; ++j) p[j] = exp_nonpositive(p[j] - mx);
  for (int l = 0; l < L; ++l) s[l] = 0.f;
  for (int j = 0; j < whole; j += L)
    for (int l = 0; l < L; ++l) s[l] += p[j + l];
  for (int j = whole; j < n; ++j) s[j - whole] += p[j];
  for (int w = L / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) s[l] += s[l + w];
  *max = mx;
  return s[0];
}

#if !defined(__clang__)
#pragma GCC pop_options
#endif
#undef SYSINFER_AS_WRITTEN

// f(std::integral_constant<int, c>{}) for c = 0 .. N-1, each c a compile-time constant.
template <int N, int C = 0, class F>
inline void for_const(const F& f) {
  if constexpr (C < N) {
    f(std::integral_constant<int, C>{});
    for_const<N, C + 1>(f);
  }
}

namespace simd {

constexpr int kTokTile = 4;      // tokens per pass over a weight tile: prefill reuses each unpacked block
constexpr int kGemvStreams = 4;  // tiles a one-token GEMV walks side by side (see few_rows)
constexpr int kFewRows = 8;      // steps of up to this many tokens stream the weights as decode does
// Whether a weight type has the two-tile path (Op::Pair, Op::pair_block), and its tokens per pass.
template <class Op, class = void>
struct has_pair : std::false_type {};
template <class Op>
struct has_pair<Op, std::void_t<typename Op::Pair>> : std::true_type {};

template <class Op, class = void>
struct tok_tile : std::integral_constant<int, kTokTile> {};
template <class Op>
struct tok_tile<Op, std::void_t<decltype(Op::kTokTile)>> : std::integral_constant<int, Op::kTokTile> {};

// Tokens per pass over a tile block in a few-row step (rows_tiles): Op::kFewTokTile where the type
// sets it, else tok_tile<Op>. A step's tiles come from DRAM once either way; a wider pass unpacks
// each block once for more tokens (see GemmQ4_0 in kernels_avx2_impl.h).
template <class Op, class = void>
struct few_tok_tile : tok_tile<Op> {};
template <class Op>
struct few_tok_tile<Op, std::void_t<decltype(Op::kFewTokTile)>> : std::integral_constant<int, Op::kFewTokTile> {};

// Tiles a step of NT tokens walks side by side: kGemvStreams for decode; for 2..8 tokens one tile, or
// one pair where the type has the pair path (see few_rows).
template <class Op, int NT>
struct few_row_streams : std::integral_constant<int, NT == 1 ? kGemvStreams : has_pair<Op>::value ? 2 : 1> {};

// Activation blocks one tile block spans: 1, or 8 for Q6_K's 256-weight super-blocks.
template <class Tile> constexpr int act_blocks = 1;
template <> constexpr int act_blocks<TileQ6_K> = QK_K / QK;
template <> constexpr int act_blocks<TileQ4_K> = QK_K / QK;
template <> constexpr int act_blocks<TileQ5_K> = QK_K / QK;
template <> constexpr int act_blocks<TileIQ4_XS> = QK_K / QK;
template <> constexpr int act_blocks<TileQ2_K> = QK_K / QK;
template <> constexpr int act_blocks<TileQ3_K> = QK_K / QK;

template <class TileT, class AccT>
struct WeightType {
  using Tile = TileT;
  using Acc = AccT;
};

// An Acc for rows that are not interleaved (Q2_K, Q3_K): one float vector per row (F::V), its lanes summed
// (F::sum) at the end. (F, not the vector type itself: a vector type as a template argument loses
// its attributes.)
template <class F>
struct RowSums {
  typename F::V r[ROW_TILE] = {};
  void store(float* y) const {
    for (int i = 0; i < ROW_TILE; ++i) y[i] = F::sum(r[i]);
  }
};

// ---- run-time count -> template argument ----

// f(std::integral_constant<int, n>{}) for a run-time n in 1..Max (nothing for other n).
template <int Max, class F>
inline void with_count(int n, const F& f) {
  if constexpr (Max >= 1) {
    if (n == Max) f(std::integral_constant<int, Max>{});
    else with_count<Max - 1>(n, f);
  }
}

// f(std::integral_constant<int, G>{}, first) over [0, n): groups of G = Max, then one group of the
// 1..Max-1 left.
template <int Max, class F>
inline void for_groups(int n, const F& f) {
  int i = 0;
  for (; i + Max <= n; i += Max) f(std::integral_constant<int, Max>{}, i);
  if (i < n) with_count<Max - 1>(n - i, [&](auto g) { f(g, i); });
}

// ---- quantized matmul ----

// y[i * ldy + r] for the 8 rows of one tile-row and NT tokens (token i's blocks at x + i * x_stride).
template <class Op, int NT>
inline void tile_tokens(const typename Op::Tile* tiles, int n_blocks, const ActBlock* x, size_t x_stride,
                        float* y, int ldy) {
  typename Op::Acc acc[NT]{};
  for (int kb = 0; kb < n_blocks; ++kb)
    Op::template block<NT>(tiles[kb], x + size_t(kb) * act_blocks<typename Op::Tile>, x_stride, acc);
  for (int i = 0; i < NT; ++i) acc[i].store(y + size_t(i) * ldy);
}

// The same for two consecutive tiles at once (tile 1 at tiles + n_blocks): Op::pair_block.
template <class Op, int NT>
inline void pair_tokens(const typename Op::Tile* tiles, int n_blocks, const ActBlock* x, size_t x_stride,
                        float* y, int ldy) {
  typename Op::Pair acc[NT]{};
  for (int kb = 0; kb < n_blocks; ++kb)
    Op::template pair_block<NT>(tiles[kb], tiles[size_t(n_blocks) + kb], x + size_t(kb) * act_blocks<typename Op::Tile>,
                                x_stride, acc);
  for (int i = 0; i < NT; ++i) acc[i].store(y + size_t(i) * ldy);
}

// Decode and few-row steps: several tiles side by side, every token of the step per tile block.
//
// A one-token GEMV of a big model streams its weights from DRAM. Walking kGemvStreams consecutive
// tiles side by side (block kb of each in turn) keeps that many sequential streams in flight, and the
// hardware prefetcher keeps more reads outstanding for them than for one stream (measured on x86:
// Q4_0 over 1 GB, 2 threads, `test_kernels --bench-dram`: 17.4 GB/s one tile at a time, 24.6 GB/s
// four side by side, plain read 30.5; not yet measured on a Kunpeng). A step of 2..8 tokens walks the
// same way (few_rows): before, it took prefill's walk, one tile at a time without prefetch, and a step
// of 2 rows cost 1.36x one row on the EPYC Zen 5 (issue 28). With several tokens, one stream (or one
// tile pair) at a time measured best on the EPYC Zen 3: each stream's accumulators are kTokTile x
// tiles wide, and 2 or 4 streams spilled them (docs/benchmarks.md, rows cost). Each tile's arithmetic
// is exactly tile_tokens' (Op::block<NT>), so a sequence decoded alone gets the same logits as in a
// batch.

// Software prefetch for the GEMV streams: each tile's stream asks for the lines kGemvPrefetchBytes
// ahead of the block it is about to use, into L1 on x86 (prefetcht0), into L2 on ARM. The hardware prefetcher alone kept too
// few reads in flight: on the EPYC Zen 5 (2 threads, `test_kernels --bench-dram`, Q4_0 over 1 GB,
// alternating runs) 25.7 / 26.2 / 25.9 GB/s without, 55.7 / 52.4 / 53.5 GB/s at 2,048 bytes ahead
// (1,024: ~45; 4,096: ~44; locality hint 3 no better); the read probe gave about 74 GB/s meanwhile.
// The hint was the non-temporal one (prefetchnta) until an Intel Xeon (family 6 model 167, AVX-512
// VNNI) showed what it costs there: 13.1 / 13.2 GB/s against a 31.5-33.2 GB/s probe (the avx2 table
// 17.2), the 8B decode at 0.45x llama.cpp; prefetcht1 32.1 / 32.5 (avx2 table 29.7), prefetcht0
// 31.4 / 31.5, prefetcht1 at 1,024 / 4,096 bytes ahead 31.0-31.2 / 30.3-30.5 (alternating builds).
// Q4_0 no better either way, but the K-quants read their blocks' scales and Q6_K its high bits more
// than once: prefetcht0 on that Xeon, `--bench-rows T 3 [ROWS COLS]`, medians of 3 alternating runs,
// Q4_K 25.8 -> 28.3 GB/s, Q6_K 24.1 -> 26.0 (14336 x 4096), Q6_K 20.4 -> 22.5 (2048 x 768).
// A hint only: results never depend on it, and a prefetch past the end of the weights is dropped, not
// a fault. Not measured on a Kunpeng (docs/benchmarks.md): ARM keeps pldl2keep.
// (kGemvPrefetchBytes and kGemvPrefetchLocality are kernels.h's: the read probe uses them too.)
//
// Near a tile's end the lines ahead run on into the next tile, which the stream beside reads anyway,
// while the tile this stream reads next (S tiles on: `next` blocks past this one's end) would begin on
// demand misses: a quarter of the bytes of a 768-column Q4_K matrix (Qwen3-30B-A3B's expert down: 3
// blocks, 3.4 KB a tile), a tenth of a 2,048-column one, before this was fixed. So what lies past the
// end is taken from that next tile instead. On x86 line by line, exactly kGemvPrefetchBytes ahead; on
// ARM whole blocks, the distance rounded up to a block, one compare per block: the per-line select cost
// the Kunpeng model (scripts/mca_table.py) 3.5 cycles per 256 weights of the Q4_0 GEMV (26.5 -> 30.0),
// while on the Intel Xeon whole blocks read 2-11 % slower than lines (`--bench-rows`, Q6_K 2048 x 768
// 18.2 against 20.5 GB/s; the MoE decode ~3 %). Past the caller's last tile the lines are another
// range's or none: a wasted read at most.
template <class Tile>
inline void gemv_prefetch(const Tile* tile, int kb, int n_blocks, size_t next) {
#if defined(__x86_64__)
  const char* ahead = reinterpret_cast<const char*>(tile + kb) + kGemvPrefetchBytes;
  const char* end = reinterpret_cast<const char*>(tile + n_blocks);
  const size_t jump = next * sizeof(Tile);
  for (size_t off = 0; off < sizeof(Tile); off += 64) {
    const char* line = ahead + off;
    __builtin_prefetch(line < end ? line : line + jump, 0, kGemvPrefetchLocality);
  }
#else
  constexpr int ahead = int((kGemvPrefetchBytes + sizeof(Tile) - 1) / sizeof(Tile));
  const char* p = reinterpret_cast<const char*>(tile + kb + ahead + (kb + ahead < n_blocks ? 0 : next));
  for (size_t off = 0; off < sizeof(Tile); off += 64) __builtin_prefetch(p + off, 0, kGemvPrefetchLocality);
#endif
}

// S consecutive tiles (tile s at tiles + s * n_blocks) for NT <= tok_tile<Op> tokens (token i's blocks
// at x + i * x_stride), block kb of each tile in turn, each block one Op::block<NT> (or pair_block<NT>
// for two tiles, where the type has it); with Prefetch, each tile's stream prefetched ahead.
// Never inlined: one pass over a tile is long enough that the call costs nothing, and GCC, inlining
// it into gemm_quantized beside the other token counts' passes, allocated the registers of the 4-token
// Q4_0 pass worse (15 % slower, `test_kernels --bench-gemm 32 2048 4`).
template <class Op, int S, int NT, bool Prefetch>
[[gnu::noinline]] void rows_lockstep(const typename Op::Tile* tiles, int n_blocks, const ActBlock* x, size_t x_stride,
                          float* y, int ldy) {
  constexpr int A = act_blocks<typename Op::Tile>;
  const size_t next = size_t(S - 1) * n_blocks;  // blocks from tile s's end to tile s + S's start
  if constexpr (has_pair<Op>::value && S % 2 == 0) {  // S / 2 pairs
    typename Op::Pair acc[S / 2][NT]{};
    for (int kb = 0; kb < n_blocks; ++kb)
#pragma GCC unroll 8
      for (int s = 0; s < S; s += 2) {
        const auto& b0 = tiles[size_t(s) * n_blocks + kb];
        const auto& b1 = tiles[size_t(s + 1) * n_blocks + kb];
        if (Prefetch) {
          gemv_prefetch(tiles + size_t(s) * n_blocks, kb, n_blocks, next);
          gemv_prefetch(tiles + size_t(s + 1) * n_blocks, kb, n_blocks, next);
        }
        Op::template pair_block<NT>(b0, b1, x + size_t(kb) * A, x_stride, acc[s / 2]);
      }
    for (int s = 0; s < S; s += 2)
      for (int i = 0; i < NT; ++i) acc[s / 2][i].store(y + size_t(i) * ldy + size_t(s) * ROW_TILE);
    return;
  }
  typename Op::Acc acc[S][NT]{};
  for (int kb = 0; kb < n_blocks; ++kb)
#pragma GCC unroll 8
    for (int s = 0; s < S; ++s) {
      const auto& b = tiles[size_t(s) * n_blocks + kb];
      if (Prefetch) gemv_prefetch(tiles + size_t(s) * n_blocks, kb, n_blocks, next);
      Op::template block<NT>(b, x + size_t(kb) * A, x_stride, acc[s]);
    }
  for (int s = 0; s < S; ++s)
    for (int i = 0; i < NT; ++i) acc[s][i].store(y + size_t(i) * ldy + size_t(s) * ROW_TILE);
}

// f(std::integral_constant<int, g>{}, std::integral_constant<int, first>{}) over [0, N) in groups of
// G (the last one shorter).
template <int N, int G, int First = 0, class F>
inline void static_groups(const F& f) {
  if constexpr (First < N) {
    f(std::integral_constant<int, std::min(G, N - First)>{}, std::integral_constant<int, First>{});
    static_groups<N, G, First + std::min(G, N - First)>(f);
  }
}

// S tiles for NT <= kFewRows tokens: few_tok_tile<Op> tokens per pass over them; the first pass
// streams the tiles from DRAM with their prefetch, the later ones find them in L2.
template <class Op, int S, int NT>
inline void rows_tiles(const typename Op::Tile* tiles, int n_blocks, const ActBlock* x, size_t x_stride, float* y,
                       int ldy) {
  static_groups<NT, few_tok_tile<Op>::value>([&](auto g, auto first) {
    constexpr int i = decltype(first)::value;
    rows_lockstep<Op, S, decltype(g)::value, i == 0>(tiles, n_blocks, x + i * x_stride, x_stride, y + size_t(i) * ldy,
                                                     ldy);
  });
}

// A step of NT <= kFewRows tokens (decode of NT sequences, a speculative verify, a draft's catch-up):
// y[i * ldy + r] for every row r of tiles [tile0, tile1) and every token i < NT. The weights stream
// from DRAM once, as the one-token GEMV reads them: few_row_streams<Op, NT> tiles side by side, then
// the tiles left one by one.
template <class Op, int NT>
void few_rows(const typename Op::Tile* tiles, int n_blocks, int tile0, int tile1, const ActBlock* x,
              size_t x_stride, float* y, int ldy) {
  constexpr int S = few_row_streams<Op, NT>::value;
  int t = tile0;
  for (; t + S <= tile1; t += S)
    rows_tiles<Op, S, NT>(tiles + size_t(t) * n_blocks, n_blocks, x, x_stride, y + size_t(t) * ROW_TILE, ldy);
  for (; t < tile1; ++t)
    rows_tiles<Op, 1, NT>(tiles + size_t(t) * n_blocks, n_blocks, x, x_stride, y + size_t(t) * ROW_TILE, ldy);
}

// Kernels::gemm for one quantized type (x: n_tok rows of x_stride ActBlocks): few_rows for up to
// kFewRows tokens; else each tile (or pair of tiles, where the type has the pair path) for
// tok_tile<Op> tokens at a time.
// (Walking the tokens in chunks whose activation blocks fit L2, every tile per chunk, measured
// slower on the EPYC: 302 / 352 / 389 GOPS for 256 KB / 1 MB / no chunks, 512 tokens, 4096 x 4096.)
template <class Op>
void gemm_quantized(const void* w, int n_blocks, int tile0, int tile1, const ActBlock* x, size_t x_stride,
                    int n_tok, float* y, int ldy) {
  const auto* tiles = static_cast<const typename Op::Tile*>(w);
  if (n_tok <= kFewRows)
    return with_count<kFewRows>(n_tok, [&](auto nt) {
      few_rows<Op, decltype(nt)::value>(tiles, n_blocks, tile0, tile1, x, x_stride, y, ldy);
    });
  constexpr int NT = tok_tile<Op>::value;
  int t = tile0;
  if constexpr (has_pair<Op>::value)
    for (; t + 2 <= tile1; t += 2)
      for_groups<NT>(n_tok, [&](auto nt, int tok) {
        pair_tokens<Op, decltype(nt)::value>(tiles + size_t(t) * n_blocks, n_blocks, x + tok * x_stride, x_stride,
                                             y + size_t(tok) * ldy + size_t(t) * ROW_TILE, ldy);
      });
  for (; t < tile1; ++t)
    for_groups<NT>(n_tok, [&](auto nt, int tok) {
      tile_tokens<Op, decltype(nt)::value>(tiles + size_t(t) * n_blocks, n_blocks, x + tok * x_stride, x_stride,
                                           y + size_t(tok) * ldy + size_t(t) * ROW_TILE, ldy);
    });
}

// One BF16 weight (the high 16 bits of an fp32: to fp32 is a 16-bit shift). A type of its own so that a
// table's Float::row tells BF16 rows from F16's uint16_t ones by overload.
struct Bf16 {
  uint16_t bits;
};
static_assert(sizeof(Bf16) == 2, "Bf16 is a plain 16-bit word");

// Kernels::gemm for F32 / F16 / BF16 rows (row-major, no tiles): each tile-row for kTokTile tokens at a time.
template <class Float>
void gemm_float(WType type, const void* w, int cols, int tile0, int tile1, const float* x, int n_tok, float* y,
                int ldy) {
  for (int t = tile0; t < tile1; ++t)
    for_groups<kTokTile>(n_tok, [&](auto nt, int tok) {
      constexpr int NT = decltype(nt)::value;
      for (int r = 0; r < ROW_TILE; ++r) {
        const size_t row = size_t(t) * ROW_TILE + r;
        float* yr = y + size_t(tok) * ldy + row;
        const float* xt = x + size_t(tok) * cols;
        if (type == WType::F32) Float::template row<NT>(static_cast<const float*>(w) + row * cols, cols, xt, yr, ldy);
        else if (type == WType::BF16) Float::template row<NT>(static_cast<const Bf16*>(w) + row * cols, cols, xt, yr, ldy);
        else Float::template row<NT>(static_cast<const uint16_t*>(w) + row * cols, cols, xt, yr, ldy);
      }
    });
}

// The weight types a table has arithmetic for beyond the four every table has (Q5_0, Q4_K, ...): each
// such Op also names its type, static constexpr WType kType. Returns false when none is `type`.
template <class... Extra>
inline bool gemm_extra(WType type, const void* w, int cols, int tile0, int tile1, const ActBlock* x, int n_tok,
                       float* y, int ldy) {
  const int nb = cols / QK;
  return ((type == Extra::kType &&
           (gemm_quantized<Extra>(w, nb / act_blocks<typename Extra::Tile>, tile0, tile1, x, nb, n_tok, y, ldy), true)) ||
          ...);
}

// Kernels::own_gemm: the four types every table has, F32 / F16 / BF16, and the Extra ones.
template <class... Extra>
bool own_gemm(WType t) {
  return t == WType::Q4_0 || t == WType::Q4_1 || t == WType::Q8_0 || t == WType::Q6_K || t == WType::F32 ||
         t == WType::F16 || t == WType::BF16 || ((t == Extra::kType) || ...);
}

template <class Q4_0, class Q4_1, class Q8_0, class Q6_K, class Float, class... Extra>
void gemm(WType type, const void* w, int cols, int tile0, int tile1, const void* x, int n_tok, float* y, int ldy) {
  const int nb = cols / QK;
  const ActBlock* xa = static_cast<const ActBlock*>(x);
  switch (type) {
    case WType::Q4_0: return gemm_quantized<Q4_0>(w, nb, tile0, tile1, xa, nb, n_tok, y, ldy);
    case WType::Q4_1: return gemm_quantized<Q4_1>(w, nb, tile0, tile1, xa, nb, n_tok, y, ldy);
    case WType::Q8_0: return gemm_quantized<Q8_0>(w, nb, tile0, tile1, xa, nb, n_tok, y, ldy);
    case WType::Q6_K: return gemm_quantized<Q6_K>(w, cols / QK_K, tile0, tile1, xa, nb, n_tok, y, ldy);
    case WType::F32:
    case WType::F16:
    case WType::BF16: return gemm_float<Float>(type, w, cols, tile0, tile1, static_cast<const float*>(x), n_tok, y, ldy);
    default:
      if (gemm_extra<Extra...>(type, w, cols, tile0, tile1, xa, n_tok, y, ldy)) return;
      // a type this table has no arithmetic for yet: the generic kernel (the same results, slower)
      return generic_kernels().gemm(type, w, cols, tile0, tile1, x, n_tok, y, ldy);
  }
}

// ---- attention over one chunk of the paged KV cache (kernels.h: attn_scores, attn_accum) ----
//
// The fp16 keys and values are loaded straight into the FMA loops (A::load_h converts in registers:
// F16C `vcvtph2ps` on x86, `fcvtl` on NEON): a block is read where it lies and never copied. Both
// are tiles of kRows query rows x kVecs output vectors, each output one FMA chain from 0:
//   scores: outputs are keys (a vector is W keys of one block: the keys of a block, [hd][bs], lie
//           W to a load for every dim i), the chain runs over i;
//   accum:  outputs are dims of the value rows ([bs][hd]: W dims to a load), the chain over keys.
// A row's chain is the same whatever rows share its tile, so a row's result never depends on how
// many rows the call has.

// One vector of a chunk's scores: the n keys [col, col + n) of one block (k: the first one's column
// for dim 0).
struct KeyVec {
  const uint16_t* k;
  int col, n;
};

// The u-th vector of the chunk's keys: ceil(bs / W) per block, the block's last one short when W
// does not divide bs, the chunk's last one short when the chunk ends inside it.
template <class A>
inline KeyVec key_vec(const uint16_t* k, const int32_t* blocks, int bs, int hd, int n_keys, int u) {
  const int per_block = (bs + A::W - 1) / A::W, b = u / per_block, off = u % per_block * A::W;
  const int col = b * bs + off;
  return {k + size_t(blocks[b]) * bs * hd + off, col, std::min({A::W, bs - off, n_keys - col})};
}

// Software prefetch (a hint: results never depend on it): the next tile's keys at the offset this
// tile reads, one dim at a time, so that whole blocks arrive while this tile's arithmetic runs; and
// the value row kPrefetchKeys keys ahead. Blocks can lie anywhere in the arena, so the hardware
// prefetcher cannot always see the next one coming.
constexpr int kPrefetchKeys = 64;

template <class A, int R, int NV, bool Full>
void scores_tile(const float* q, int ldq, const KeyVec* kv, const uint16_t* const* next, int n_next, int bs, int hd,
                 float* s, int lds) {
  typename A::V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < NV; ++u) acc[r][u] = A::zero();
  for (int i = 0; i < hd; ++i) {
    for (int u = 0; u < n_next; ++u) __builtin_prefetch(next[u] + size_t(i) * bs, 0, 3);
    typename A::V kk[NV];
    for (int u = 0; u < NV; ++u)
      kk[u] = Full ? A::load_h(kv[u].k + size_t(i) * bs) : A::load_h(kv[u].k + size_t(i) * bs, kv[u].n);
    for (int r = 0; r < R; ++r) {
      const typename A::V qi = A::bcast(q + size_t(r) * ldq + i);
      for (int u = 0; u < NV; ++u) acc[r][u] = A::fma(qi, kk[u], acc[r][u]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < NV; ++u) {
      float* out = s + size_t(r) * lds + kv[u].col;
      if (Full) A::store(out, acc[r][u]);
      else A::store(out, acc[r][u], kv[u].n);
    }
}

// Kernels::attn_scores: kVecs key vectors at a time (their K read once for all rows, from L1 after
// the first row group), rows kRows at a time, then the 1..kRows-1 left.
template <class A>
void attn_scores(const float* q, int ldq, int n_rows, const uint16_t* k, const int32_t* blocks, int bs, int hd,
                 int n_keys, float* s, int lds) {
  const int per_block = (bs + A::W - 1) / A::W;
  const int n_vec = n_keys / bs * per_block + (n_keys % bs + A::W - 1) / A::W;
  for (int u0 = 0; u0 < n_vec; u0 += A::kVecs) {
    const int nv = std::min(A::kVecs, n_vec - u0);
    KeyVec kv[A::kVecs];
    bool full = true;
    for (int u = 0; u < nv; ++u) {
      kv[u] = key_vec<A>(k, blocks, bs, hd, n_keys, u0 + u);
      full &= kv[u].n == A::W;
    }
    const uint16_t* next[A::kVecs];  // the next tile's keys, prefetched by the first row group
    const int n_next = std::min(A::kVecs, n_vec - (u0 + nv));
    for (int u = 0; u < n_next; ++u) next[u] = key_vec<A>(k, blocks, bs, hd, n_keys, u0 + nv + u).k;
    with_count<A::kVecs>(nv, [&](auto vecs) {
      constexpr int NV = decltype(vecs)::value;
      for_groups<A::kRows>(n_rows, [&](auto rows, int r) {
        constexpr int R = decltype(rows)::value;
        const int pf = r == 0 ? n_next : 0;
        if (full) scores_tile<A, R, NV, true>(q + size_t(r) * ldq, ldq, kv, next, pf, bs, hd, s + size_t(r) * lds, lds);
        else scores_tile<A, R, NV, false>(q + size_t(r) * ldq, ldq, kv, next, pf, bs, hd, s + size_t(r) * lds, lds);
      });
    });
  }
}

// Dims [col, col + NV * W) of R rows' accumulators (the last vector n_last dims when not Full), over
// the chunk's keys in order.
template <class A, int R, int NV, bool Full, bool Prefetch>
void accum_tile(const float* p, int ldp, const uint16_t* v, const int32_t* blocks, int bs, int hd, int n_keys,
                int col, int n_last, float* acc, int ldacc) {
  typename A::V a[R][NV];
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < NV; ++u) a[r][u] = A::zero();
  for (int b = 0, j = 0; j < n_keys; ++b) {
    const uint16_t* vb = v + size_t(blocks[b]) * bs * hd + col;  // [bs][hd] from this strip's first dim
    for (const int j_end = std::min(n_keys, j + bs); j < j_end; ++j, vb += hd) {
      if (Prefetch && j + kPrefetchKeys < n_keys) {
        const int ja = j + kPrefetchKeys;
        const char* ahead = reinterpret_cast<const char*>(v + (size_t(blocks[ja / bs]) * bs + ja % bs) * hd + col);
        for (int off = 0; off < NV * A::W * 2; off += 64) __builtin_prefetch(ahead + off, 0, 3);
      }
      typename A::V vv[NV];
      for (int u = 0; u < NV; ++u)
        vv[u] = Full || u < NV - 1 ? A::load_h(vb + u * A::W) : A::load_h(vb + u * A::W, n_last);
      for (int r = 0; r < R; ++r) {
        const typename A::V pj = A::bcast(p + size_t(r) * ldp + j);
        for (int u = 0; u < NV; ++u) a[r][u] = A::fma(pj, vv[u], a[r][u]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < NV; ++u) {
      float* out = acc + size_t(r) * ldacc + col + u * A::W;
      if (Full || u < NV - 1) A::store(out, a[r][u]);
      else A::store(out, a[r][u], n_last);
    }
}

// Kernels::attn_accum: strips of kVecs vectors of dims (each strip reads its part of every value row
// of the chunk), rows kRows at a time, then the 1..kRows-1 left.
template <class A>
void attn_accum(const float* p, int ldp, int n_rows, const uint16_t* v, const int32_t* blocks, int bs, int hd,
                int n_keys, float* acc, int ldacc) {
  const int n_vec = (hd + A::W - 1) / A::W;
  for (int u0 = 0; u0 < n_vec; u0 += A::kVecs) {
    const int nv = std::min(A::kVecs, n_vec - u0), col = u0 * A::W;
    const int n_last = std::min(A::W, hd - (col + (nv - 1) * A::W));
    with_count<A::kVecs>(nv, [&](auto vecs) {
      constexpr int NV = decltype(vecs)::value;
      for_groups<A::kRows>(n_rows, [&](auto rows, int r) {
        constexpr int R = decltype(rows)::value;
        const float* pr = p + size_t(r) * ldp;
        float* ar = acc + size_t(r) * ldacc;
        // the first row group of a strip reads its values first: it prefetches them
        if (n_last != A::W) accum_tile<A, R, NV, false, false>(pr, ldp, v, blocks, bs, hd, n_keys, col, n_last, ar, ldacc);
        else if (r == 0) accum_tile<A, R, NV, true, true>(pr, ldp, v, blocks, bs, hd, n_keys, col, n_last, ar, ldacc);
        else accum_tile<A, R, NV, true, false>(pr, ldp, v, blocks, bs, hd, n_keys, col, n_last, ar, ldacc);
      });
    });
  }
}

// A table's Kernels: gemm and attention made by the skeleton from the table's arithmetic, its other
// routines as given, softmax compiled in its file.
template <class Q4_0, class Q4_1, class Q8_0, class Q6_K, class Float, class Attention, class... Extra>
constexpr Kernels table(const char* name, decltype(Kernels::quantize_act) quantize_act,
                        decltype(Kernels::f16_to_f32) f16_to_f32, decltype(Kernels::f32_to_f16) f32_to_f16) {
  return {name, quantize_act, gemm<Q4_0, Q4_1, Q8_0, Q6_K, Float, Extra...>,
          attn_scores<Attention>, attn_accum<Attention>, f16_to_f32, f32_to_f16, softmax, own_gemm<Extra...>};
}

}  // namespace simd
}  // namespace
}  // namespace sysinfer
