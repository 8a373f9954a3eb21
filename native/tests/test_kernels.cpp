// Every kernel table this CPU runs, held equal to the generic table on random inputs (odd sizes,
// tile ranges not starting at 0 or not ending at the last tile, 1..9 and 33 tokens, rows padded to
// a multiple of 8), plus packing round trips. Runs natively and, for the
// aarch64 build, under qemu-aarch64.
//
//   test_kernels                 run the checks; closing line "N passed, M failed"
//   test_kernels --expect NAME   also check that select_kernels() picks NAME on this CPU
//   test_kernels --bench [all] [N]  single-thread GEMV (8B FFN-sized) and N-token (64) GEMM speed of
//                                each table this CPU runs, for Q4_0 (or every type)
//   test_kernels --bench-gemm ROWS COLS N [TYPE]  single-thread GEMM of one shape (N tokens; Q4_0 unless
//                                TYPE) for each SIMD table this CPU runs, in GOPS (best of 30 timings; an 8B
//                                matrix: 4096 14336 128; the arithmetic alone: 128 4096 N, in L2)
//   test_kernels --bench-peak    (x86) one core's clock and vpdpbusd (AVX-512 VNNI) or vpmaddubsw (AVX2)
//                                throughput: its int8 peak
//   test_kernels --bench-attn [hot]  single-thread attention (decode and a 32-token prefill item) at
//                                long context on the SmolLM2 and Llama-3-8B shapes, each table this CPU
//                                runs; `hot`: one layer, so the K/V stay in the caches (the arithmetic alone)
//   test_kernels --bench-dram    two-thread Q4_0 GEMV over 1 GB of weights (out of every cache, as
//                                decode of a big model is) against a two-thread read of the same bytes
//   test_kernels --bench-rows [TYPE] [ROUNDS] [ROWS COLS]  two-thread gemm of r = 1, 2, 4, 8 tokens over
//                                ~1 GB of TYPE (Q4_0 by default) weights, copies of a ROWS x COLS matrix
//                                (14336 x 4096; an expert of Qwen3-30B-A3B: 1536 2048 or 2048 768), each
//                                thread its own copies: each r's cost against r = 1 (issue 28)
#include <algorithm>
#include <chrono>
#include <ctime>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "aligned_array.h"
#include "attention.h"
#include "bandwidth.h"
#include "kernels.h"
#include "kernels_simd.h"  // the SIMD tables' loops, walked here with a plain C++ weight type (check_skeleton)

using namespace sysinfer;

namespace {

int g_passed = 0, g_failed = 0;

void check(bool ok, const std::string& what) {
  if (ok) {
    ++g_passed;
  } else {
    ++g_failed;
    std::printf("FAIL %s\n", what.c_str());
  }
}

std::mt19937 rng(12345);

float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); }

// rows x gguf_row_bytes(type, cols) bytes of valid random blocks (finite scales).
std::vector<uint8_t> random_gguf_matrix(WType type, int rows, int cols) {
  std::vector<uint8_t> data(gguf_row_bytes(type, cols) * rows);
  for (auto& b : data) b = uint8_t(rng());
  auto set_fp16 = [&](uint8_t* p, float v) {
    const uint16_t h = fp32_to_fp16(v);
    std::memcpy(p, &h, 2);
  };
  const size_t n = data.size();
  switch (type) {
    case WType::F32:
      for (size_t i = 0; i < n / 4; ++i) { const float v = uniform(-1, 1); std::memcpy(&data[4 * i], &v, 4); }
      break;
    case WType::F16:
      for (size_t i = 0; i < n / 2; ++i) set_fp16(&data[2 * i], uniform(-1, 1));
      break;
    case WType::Q4_0: case WType::Q8_0:
      for (size_t i = 0; i < n; i += (type == WType::Q4_0 ? 18 : 34)) set_fp16(&data[i], uniform(-0.1f, 0.1f));
      break;
    case WType::Q4_1:
      for (size_t i = 0; i < n; i += 20) { set_fp16(&data[i], uniform(0.f, 0.1f)); set_fp16(&data[i + 2], uniform(-1, 1)); }
      break;
    case WType::Q6_K:
      for (size_t i = 0; i < n; i += 210) set_fp16(&data[i + 208], uniform(-0.01f, 0.01f));
      break;
    case WType::BF16:
      for (size_t i = 0; i < n / 2; ++i) {
        const float v = uniform(-1, 1);
        uint32_t bits;
        std::memcpy(&bits, &v, 4);
        const uint16_t h = uint16_t(bits >> 16);
        std::memcpy(&data[2 * i], &h, 2);
      }
      break;
    default: {  // the other quantized types: random codes and scale bytes, finite fp16 d (and dmin / m)
      struct Fp16At { size_t block, d, second; };  // block bytes, offset of d, of dmin / m (0: none)
      const Fp16At f = type == WType::Q5_0 ? Fp16At{22, 0, 0} : type == WType::Q5_1 ? Fp16At{24, 0, 2}
                     : type == WType::IQ4_NL ? Fp16At{18, 0, 0} : type == WType::Q2_K ? Fp16At{84, 80, 82}
                     : type == WType::Q3_K ? Fp16At{110, 108, 0} : type == WType::Q4_K ? Fp16At{144, 0, 2}
                     : type == WType::Q5_K ? Fp16At{176, 0, 2} : Fp16At{136, 0, 0};  // IQ4_XS
      for (size_t i = 0; i < n; i += f.block) {
        set_fp16(&data[i + f.d], uniform(-0.01f, 0.01f));
        if (f.second) set_fp16(&data[i + f.second], uniform(-0.05f, 0.05f));
      }
    }
  }
  return data;
}

std::vector<float> random_floats(size_t n, float outlier_every = 0) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = uniform(-2, 2);
  if (outlier_every > 0)
    for (size_t i = 0; i < n; i += size_t(outlier_every)) v[i] *= 40;  // real activations have outliers
  return v;
}

const char* type_name(WType t) {
  switch (t) {
    case WType::F32: return "F32"; case WType::F16: return "F16"; case WType::Q4_0: return "Q4_0";
    case WType::Q4_1: return "Q4_1"; case WType::Q8_0: return "Q8_0"; case WType::Q6_K: return "Q6_K";
    case WType::Q5_0: return "Q5_0"; case WType::Q5_1: return "Q5_1"; case WType::IQ4_NL: return "IQ4_NL";
    case WType::Q2_K: return "Q2_K"; case WType::Q3_K: return "Q3_K"; case WType::Q4_K: return "Q4_K";
    case WType::Q5_K: return "Q5_K"; case WType::IQ4_XS: return "IQ4_XS"; case WType::BF16: return "BF16";
  }
  return "?";
}

// Every weight type, the float ones last.
const WType kAllTypes[] = {WType::Q4_0, WType::Q4_1, WType::Q5_0,  WType::Q5_1, WType::Q8_0,   WType::IQ4_NL,
                           WType::Q2_K, WType::Q3_K, WType::Q4_K,  WType::Q5_K, WType::Q6_K,   WType::IQ4_XS,
                           WType::F16,  WType::F32,  WType::BF16};

bool is_quantized(WType t) { return !is_float_type(t); }

// gemm of `k` vs generic on one random case: tiles [tile0, tiles - tail) of a rows x cols matrix.
void check_gemm(const Kernels& k, WType type, int rows, int cols, int n_tok, int tile0, int tail = 0) {
  const auto gguf = random_gguf_matrix(type, rows, cols);
  std::vector<uint8_t> packed(packed_bytes(type, rows, cols));
  pack_matrix(type, gguf.data(), rows, cols, packed.data());
  const auto x = random_floats(size_t(n_tok) * cols, 37);
  const Kernels& g = generic_kernels();
  std::vector<ActBlock> xq(size_t(n_tok) * cols / QK);
  for (int t = 0; t < n_tok; ++t) g.quantize_act(x.data() + size_t(t) * cols, xq.data() + size_t(t) * cols / QK, cols, act_group(type));
  const void* in = is_quantized(type) ? static_cast<const void*>(xq.data()) : x.data();
  const int prow = padded_rows(rows), tiles = prow / ROW_TILE - tail, ldy = prow + 3;
  // y: n_tok rows of ldy floats; entries outside the tile range keep the -7 they start with.
  std::vector<float> y_ref(size_t(n_tok) * ldy, -7.f), y(size_t(n_tok) * ldy, -7.f);
  g.gemm(type, packed.data(), cols, tile0, tiles, in, n_tok, y_ref.data(), ldy);
  k.gemm(type, packed.data(), cols, tile0, tiles, in, n_tok, y.data(), ldy);
  double worst = 0, scale = 1e-6;
  bool padding_zero = true;
  for (size_t i = 0; i < y.size(); ++i) {
    worst = std::max(worst, double(std::fabs(y[i] - y_ref[i])));
    scale = std::max(scale, double(std::fabs(y_ref[i])));
    const int r = int(i % ldy);
    if (r >= rows && r < tiles * ROW_TILE) padding_zero &= y[i] == 0.f;
  }
  if (tiles == prow / ROW_TILE) check(padding_zero, std::string(k.name) + " gemm padding rows are 0");
  // Integer block dots are exact in both; only float accumulation order differs.
  char what[160];
  std::snprintf(what, sizeof what, "%s gemm %s rows=%d cols=%d n_tok=%d tile0=%d: max diff %.3g (scale %.3g)", k.name,
                type_name(type), rows, cols, n_tok, tile0, worst, scale);
  check(worst <= 2e-5 * scale * std::sqrt(double(cols) / 32), what);
}

// A token's outputs from a one-token call equal, bit for bit, its outputs from a call with other
// tokens beside it: a sequence decoded alone and in a batch sees the same logits.
void check_decode_matches_batch(const Kernels& k, WType type, int rows, int cols, int n_tok) {
  const auto gguf = random_gguf_matrix(type, rows, cols);
  std::vector<uint8_t> packed(packed_bytes(type, rows, cols));
  pack_matrix(type, gguf.data(), rows, cols, packed.data());
  const int prow = padded_rows(rows), tiles = prow / ROW_TILE;
  const auto x = random_floats(size_t(n_tok) * cols, 41);
  std::vector<ActBlock> xq(size_t(n_tok) * cols / QK);
  for (int t = 0; t < n_tok; ++t) k.quantize_act(x.data() + size_t(t) * cols, xq.data() + size_t(t) * cols / QK, cols, act_group(type));
  std::vector<float> y_batch(size_t(n_tok) * prow), y_one(prow);
  bool same = true;
  for (int t = 0; t < n_tok; ++t) {
    const ActBlock* xq_t = xq.data() + size_t(t) * cols / QK;
    const float* x_t = x.data() + size_t(t) * cols;
    const void* in_t = is_quantized(type) ? static_cast<const void*>(xq_t) : x_t;
    const void* in_all = is_quantized(type) ? static_cast<const void*>(xq.data()) : x.data();
    if (t == 0) k.gemm(type, packed.data(), cols, 0, tiles, in_all, n_tok, y_batch.data(), prow);
    k.gemm(type, packed.data(), cols, 0, tiles, in_t, 1, y_one.data(), prow);
    same &= std::memcmp(y_one.data(), y_batch.data() + size_t(t) * prow, sizeof(float) * prow) == 0;
  }
  check(same, std::string(k.name) + " gemm " + type_name(type) + ": one token alone == the same token in a batch of " +
                  std::to_string(n_tok));
}

// The table whose results table k must give bit for bit, if any, and on which types: neon-i8mm
// computes the same exact integer block sums as neon-dotprod with `smmla` instead of `sdot`, and the
// same float step after them, so a model gives the same logits on a Kunpeng 920 (dotprod) and on a
// newer i8mm core. avx512 runs AVX2's arithmetic for the K-quant file types (Q4_K, Q5_K and Q6_K
// redone two tiles or two rows a register, lane for lane; the others AVX2's own code).
struct BitTwin {
  const Kernels* twin = nullptr;
  std::vector<WType> types;
};
BitTwin bit_twin(const Kernels& k) {
  if (&k == neon_i8mm_kernels()) return {neon_dotprod_kernels(), {WType::Q4_0, WType::Q4_1, WType::Q8_0, WType::Q6_K}};
  if (&k == avx512_kernels())
    return {avx2_kernels(), {WType::Q5_0, WType::Q5_1, WType::Q2_K, WType::Q3_K, WType::Q4_K, WType::Q5_K, WType::Q6_K,
                             WType::IQ4_NL, WType::IQ4_XS}};
  return {};
}

// gemm of k and of its twin, bit for bit, on the given quantized types: odd row counts, tile ranges
// with a head and a tail cut off, 1..9, 16 and 33 tokens (odd passes pair a token with itself).
void check_bit_twin(const Kernels& k, const Kernels& twin, const std::vector<WType>& types) {
  int cases = 0;
  for (WType type : types) {
    const int cols = block_elems(type) == 256 ? 512 : 160, rows = 8 * 5 - 3;
    const auto gguf = random_gguf_matrix(type, rows, cols);
    std::vector<uint8_t> packed(packed_bytes(type, rows, cols));
    pack_matrix(type, gguf.data(), rows, cols, packed.data());
    const int prow = padded_rows(rows), tiles = prow / ROW_TILE;
    for (int n_tok : {1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 33})
      for (int tile0 : {0, 1}) {
        const int tile1 = tiles - tile0;  // with tile0 = 1, a head and a tail tile are left out
        const auto x = random_floats(size_t(n_tok) * cols, 29);
        std::vector<ActBlock> xq(size_t(n_tok) * cols / QK);
        for (int t = 0; t < n_tok; ++t)
          twin.quantize_act(x.data() + size_t(t) * cols, xq.data() + size_t(t) * cols / QK, cols, act_group(type));
        std::vector<float> y(size_t(n_tok) * prow, -7.f), y_twin = y;
        k.gemm(type, packed.data(), cols, tile0, tile1, xq.data(), n_tok, y.data(), prow);
        twin.gemm(type, packed.data(), cols, tile0, tile1, xq.data(), n_tok, y_twin.data(), prow);
        check(std::memcmp(y.data(), y_twin.data(), sizeof(float) * y.size()) == 0,
              std::string(k.name) + " gemm " + type_name(type) + " == " + twin.name + ", bit for bit, n_tok=" +
                  std::to_string(n_tok) + " tile0=" + std::to_string(tile0));
        ++cases;
      }
  }
  std::printf("%s == %s bit for bit: %d gemm cases\n", k.name, twin.name, cases);
}

// ---- the skeleton's walks (kernels_simd.h), with plain C++ arithmetic ----
//
// A Q4_0 weight type in plain C++ with a token tile of TokTile, and (PlainPairQ4_0) the two-tile path:
// the walks every SIMD table shares (the one-token GEMV's lockstep tiles, the few-row steps, prefill's
// token groups and tile pairs, the tiles left over) run here whatever this CPU is, the pair walk that
// only the AVX-512 table takes included. Each row's sum is one chain of q4_0_step calls in block order.
[[gnu::noinline]] float q4_0_step(float acc, const TileQ4_0& b, int r, const ActBlock& a) {
  int dot = -8 * (a.sum[0] + a.sum[1]);
  for (int j = 0; j < 16; ++j) {
    const uint8_t byte = b.q[j / 4][r][j % 4];
    dot += int(byte & 0xF) * a.qs[j] + int(byte >> 4) * a.qs[j + 16];
  }
  return acc + fp16_to_fp32(b.d[r]) * a.d * float(dot);
}

template <int N>
struct PlainSums {
  float v[N] = {};
  void store(float* y) const { std::memcpy(y, v, sizeof v); }
};

template <int TokTile>
struct PlainQ4_0 : simd::WeightType<TileQ4_0, PlainSums<ROW_TILE>> {
  static constexpr int kTokTile = TokTile;
  template <int NT>
  static void block(const Tile& b, const ActBlock* a, size_t a_stride, Acc* acc) {
    static_assert(NT >= 1 && NT <= TokTile, "block<NT> is called for 1..kTokTile tokens");
    for (int i = 0; i < NT; ++i)
      for (int r = 0; r < ROW_TILE; ++r) acc[i].v[r] = q4_0_step(acc[i].v[r], b, r, a[i * a_stride]);
  }
};

// Prefill's passes of TokTile tokens, few-row steps' of FewTokTile (kFewTokTile).
template <int TokTile, int FewTokTile>
struct PlainFewQ4_0 : PlainQ4_0<std::max(TokTile, FewTokTile)> {
  static constexpr int kTokTile = TokTile;
  static constexpr int kFewTokTile = FewTokTile;
};

template <int TokTile>
struct PlainPairQ4_0 : PlainQ4_0<TokTile> {
  using Pair = PlainSums<2 * ROW_TILE>;
  template <int NT>
  static void pair_block(const TileQ4_0& b0, const TileQ4_0& b1, const ActBlock* a, size_t a_stride, Pair* acc) {
    static_assert(NT >= 1 && NT <= TokTile, "pair_block<NT> is called for 1..kTokTile tokens");
    for (int i = 0; i < NT; ++i)
      for (int r = 0; r < ROW_TILE; ++r) {
        acc[i].v[r] = q4_0_step(acc[i].v[r], b0, r, a[i * a_stride]);
        acc[i].v[ROW_TILE + r] = q4_0_step(acc[i].v[ROW_TILE + r], b1, r, a[i * a_stride]);
      }
  }
};

// simd::gemm_quantized<Op> over tiles [tile0, tile1) of a packed Q4_0 matrix equals, bit for bit, each
// row's chain of q4_0_step over its blocks for each token alone, and writes nothing else: for 1..9, 16
// and 33 tokens, tile ranges with a head and a tail cut off, 11 tiles (lockstep groups and a remainder).
template <class Op>
void check_skeleton_op(const char* name) {
  const int rows = 8 * 11 - 3, cols = 160, nb = cols / QK;
  const auto gguf = random_gguf_matrix(WType::Q4_0, rows, cols);
  std::vector<uint8_t> packed(packed_bytes(WType::Q4_0, rows, cols));
  pack_matrix(WType::Q4_0, gguf.data(), rows, cols, packed.data());
  const auto* tiles = reinterpret_cast<const TileQ4_0*>(packed.data());
  const int prow = padded_rows(rows), ldy = prow + 5;
  bool same = true;
  int cases = 0;
  for (int n_tok : {1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 33})
    for (int tile0 : {0, 1, 2}) {
      const int tile1 = prow / ROW_TILE - (tile0 == 2 ? 1 : tile0);
      const auto x = random_floats(size_t(n_tok) * cols, 43);
      std::vector<ActBlock> xq(size_t(n_tok) * nb);  // [n_tok][nb]
      generic_kernels().quantize_act(x.data(), xq.data(), n_tok * cols, 1);
      std::vector<float> y(size_t(n_tok) * ldy, -7.f), ref = y;  // [n_tok][ldy]
      simd::gemm_quantized<Op>(packed.data(), nb, tile0, tile1, xq.data(), nb, n_tok, y.data(), ldy);
      for (int i = 0; i < n_tok; ++i)
        for (int t = tile0; t < tile1; ++t)
          for (int r = 0; r < ROW_TILE; ++r) {
            float acc = 0.f;
            for (int kb = 0; kb < nb; ++kb) acc = q4_0_step(acc, tiles[size_t(t) * nb + kb], r, xq[size_t(i) * nb + kb]);
            ref[size_t(i) * ldy + t * ROW_TILE + r] = acc;
          }
      same &= std::memcmp(y.data(), ref.data(), sizeof(float) * y.size()) == 0;
      ++cases;
    }
  check(same, std::string("skeleton walk with ") + name + " == each row's chain alone, bit for bit (" +
                  std::to_string(cases) + " cases)");
}

void check_skeleton() {
  check_skeleton_op<PlainQ4_0<4>>("PlainQ4_0<4>");         // the AVX2 / NEON walk
  check_skeleton_op<PlainQ4_0<3>>("PlainQ4_0<3>");         // token groups that do not divide 8
  check_skeleton_op<PlainFewQ4_0<4, 8>>("PlainFewQ4_0<4, 8>");  // the AVX2 Q4 walk: few-row steps in one pass
  check_skeleton_op<PlainFewQ4_0<4, 3>>("PlainFewQ4_0<4, 3>");
  check_skeleton_op<PlainPairQ4_0<8>>("PlainPairQ4_0<8>"); // the AVX-512 walk: tile pairs, 8 tokens a pass
  check_skeleton_op<PlainPairQ4_0<3>>("PlainPairQ4_0<3>");
}

void check_quantize(const Kernels& k) {
  for (int group : {1, QK_K / QK})
    for (int n : {32, 64, 576, 4096}) {
      if (n % (QK * group)) continue;
      auto x = random_floats(n, 13);
      for (int i = 0; i < 32; ++i) x[i] = 0.f;  // an all-zero block
      if (n > 40) x[40] = 127.5f / 127.f * 3.f; // values near rounding ties (n = 32 is the zero block alone)
      std::vector<ActBlock> a(n / QK), b(n / QK);
      generic_kernels().quantize_act(x.data(), a.data(), n, group);
      k.quantize_act(x.data(), b.data(), n, group);
      bool same = true;
      for (int i = 0; i < n / QK; ++i)
        same &= a[i].d == b[i].d && a[i].sum[0] == b[i].sum[0] && a[i].sum[1] == b[i].sum[1] &&
                std::memcmp(a[i].qs, b[i].qs, QK) == 0;
      check(same, std::string(k.name) + " quantize_act n=" + std::to_string(n) + " group=" + std::to_string(group));
    }
  // The generic definition itself: d = max|x|/127, half away from zero, sums of halves.
  std::vector<float> x(32);
  for (int i = 0; i < 32; ++i) x[i] = float(i - 16) * 0.5f;
  x[31] = 127.f;
  ActBlock a;
  generic_kernels().quantize_act(x.data(), &a, 32, 1);
  bool ok = a.d == 1.f && a.qs[31] == 127 && a.qs[0] == -8 && a.qs[1] == -8 /* -7.5 -> -8 */ && a.qs[3] == -7 /* -6.5 */;
  int s0 = 0, s1 = 0;
  for (int i = 0; i < 16; ++i) { s0 += a.qs[i]; s1 += a.qs[16 + i]; }
  check(ok && s0 == a.sum[0] && s1 == a.sum[1], "generic quantize_act definition");
  // A group of 8 blocks shares the scale of its largest value: block 5 holds 254, so every block's d
  // is 2 and the 1.0s of the others quantize to 1 (0.5 away from zero), where alone they would be 127.
  std::vector<float> y(256, 1.f);
  y[5 * 32 + 7] = 254.f;
  std::vector<ActBlock> g(8);
  generic_kernels().quantize_act(y.data(), g.data(), 256, 8);
  bool shared = true;
  for (int b = 0; b < 8; ++b) shared &= g[b].d == 2.f && g[b].qs[0] == 1 && g[b].sum[1] == 16;
  check(shared && g[5].qs[7] == 127 && g[5].sum[0] == 15 + 127, "generic quantize_act: 8 blocks share one scale");
}

// A chunk of one KV head's paged fp16 cache as attention reads it: blocks of bs keys, K [hd][bs] and
// V [bs][hd] per block, the chunk's blocks scattered over an arena in shuffled order, its last block
// the arena's last (so a read past it leaves the buffer: ASan sees it). Slots past n_keys in that
// block hold NaN: a kernel that reads one into a result shows it.
struct PagedChunk {
  std::vector<uint16_t> k, v;     // [arena blocks][bs * hd]
  std::vector<int32_t> blocks;    // the chunk's block ids, in key order
};

PagedChunk random_paged_chunk(int bs, int hd, int n_keys) {
  const int nb = (n_keys + bs - 1) / bs, arena = nb + 3;
  PagedChunk c;
  c.k.resize(size_t(arena) * bs * hd);
  c.v.resize(c.k.size());
  for (auto& h : c.k) h = fp32_to_fp16(uniform(-2, 2));
  for (auto& h : c.v) h = fp32_to_fp16(uniform(-2, 2));
  std::vector<int32_t> ids(arena - 1);
  for (int i = 0; i < arena - 1; ++i) ids[i] = i;
  std::shuffle(ids.begin(), ids.end(), rng);
  c.blocks.assign(ids.begin(), ids.begin() + nb - 1);
  c.blocks.push_back(arena - 1);
  const uint16_t nan = 0x7E00;
  uint16_t* kl = c.k.data() + size_t(arena - 1) * bs * hd;
  uint16_t* vl = c.v.data() + size_t(arena - 1) * bs * hd;
  for (int slot = n_keys - (nb - 1) * bs; slot < bs; ++slot)
    for (int i = 0; i < hd; ++i) kl[size_t(i) * bs + slot] = vl[size_t(slot) * hd + i] = nan;
  return c;
}

// attn_scores / attn_accum against the generic table, on ragged shapes (block sizes the vector width
// divides and not, chunks ending inside a block, odd head sizes); also checks that nothing outside
// the named ranges is written, that no key past the chunk is read, and that a row's result is
// bit-identical whether it is computed alone or inside a tile of rows (prefill and decode must agree).
// The generic table itself against a double-precision sum of the same fp16 values.
void check_attention_ops(const Kernels& k) {
  const Kernels& g = generic_kernels();
  const bool is_generic = &k == &g;  // then: the definition, in double
  const float sentinel = 12345.f;
  for (int bs : {16, 5, 32})
    for (int hd : {4, 17, 64, 128})
      for (int n_keys : {1, 3, 8, 15, 16, 17, 33, 71})
        for (int n_rows : {1, 2, 3, 4, 5, 7, 12}) {
          const std::string what = " bs=" + std::to_string(bs) + " hd=" + std::to_string(hd) +
                                   " keys=" + std::to_string(n_keys) + " rows=" + std::to_string(n_rows);
          const PagedChunk c = random_paged_chunk(bs, hd, n_keys);
          const int ldq = hd + 3, lds = n_keys + 7, ldacc = hd + 2;
          const auto q = random_floats(size_t(n_rows) * ldq);
          std::vector<float> s0(size_t(n_rows) * lds, sentinel), s1 = s0;
          g.attn_scores(q.data(), ldq, n_rows, c.k.data(), c.blocks.data(), bs, hd, n_keys, s0.data(), lds);
          k.attn_scores(q.data(), ldq, n_rows, c.k.data(), c.blocks.data(), bs, hd, n_keys, s1.data(), lds);
          bool close = true, untouched = true, exact = true;
          for (int r = 0; r < n_rows; ++r)
            for (int j = 0; j < lds; ++j) {
              const float a = s0[size_t(r) * lds + j], b = s1[size_t(r) * lds + j];
              if (j >= n_keys) {
                untouched &= a == sentinel && b == sentinel;
                continue;
              }
              close &= std::fabs(a - b) <= 1e-5f * std::sqrt(float(hd)) * (1 + std::fabs(a));
              if (!is_generic) continue;
              double ref = 0;  // the definition: q . K_j over the fp16 keys
              const uint16_t* kb = c.k.data() + size_t(c.blocks[j / bs]) * bs * hd;
              for (int i = 0; i < hd; ++i) ref += double(q[size_t(r) * ldq + i]) * fp16_to_fp32(kb[size_t(i) * bs + j % bs]);
              exact &= std::fabs(a - ref) <= 1e-5 * std::sqrt(double(hd)) * (1 + std::fabs(ref));
            }
          check(close, std::string(k.name) + " attn_scores" + what);
          check(untouched, std::string(k.name) + " attn_scores writes only its range" + what);
          if (is_generic) check(exact, "generic attn_scores == q . K in double" + what);
          std::vector<float> last(size_t(lds), sentinel);  // the last row on its own
          k.attn_scores(q.data() + size_t(n_rows - 1) * ldq, ldq, 1, c.k.data(), c.blocks.data(), bs, hd, n_keys,
                        last.data(), lds);
          check(std::memcmp(last.data(), s1.data() + size_t(n_rows - 1) * lds, sizeof(float) * n_keys) == 0,
                std::string(k.name) + " attn_scores row independent of its tile" + what);

          const auto p = random_floats(size_t(n_rows) * lds);
          std::vector<float> a0(size_t(n_rows) * ldacc, sentinel), a1 = a0;
          g.attn_accum(p.data(), lds, n_rows, c.v.data(), c.blocks.data(), bs, hd, n_keys, a0.data(), ldacc);
          k.attn_accum(p.data(), lds, n_rows, c.v.data(), c.blocks.data(), bs, hd, n_keys, a1.data(), ldacc);
          close = untouched = exact = true;
          for (int r = 0; r < n_rows; ++r)
            for (int i = 0; i < ldacc; ++i) {
              const float a = a0[size_t(r) * ldacc + i], b = a1[size_t(r) * ldacc + i];
              if (i >= hd) {
                untouched &= a == sentinel && b == sentinel;
                continue;
              }
              close &= std::fabs(a - b) <= 1e-5f * std::sqrt(float(n_keys)) * (1 + std::fabs(a));
              if (!is_generic) continue;
              double ref = 0;  // the definition: sum_j p_j V_j over the fp16 values
              for (int j = 0; j < n_keys; ++j)
                ref += double(p[size_t(r) * lds + j]) *
                       fp16_to_fp32(c.v[(size_t(c.blocks[j / bs]) * bs + j % bs) * hd + i]);
              exact &= std::fabs(a - ref) <= 1e-5 * std::sqrt(double(n_keys)) * (1 + std::fabs(ref));
            }
          check(close, std::string(k.name) + " attn_accum" + what);
          check(untouched, std::string(k.name) + " attn_accum writes only its range" + what);
          if (is_generic) check(exact, "generic attn_accum == p . V in double" + what);
          std::vector<float> alone(size_t(ldacc), sentinel);
          k.attn_accum(p.data() + size_t(n_rows - 1) * lds, lds, 1, c.v.data(), c.blocks.data(), bs, hd, n_keys,
                       alone.data(), ldacc);
          check(std::memcmp(alone.data(), a1.data() + size_t(n_rows - 1) * ldacc, sizeof(float) * hd) == 0,
                std::string(k.name) + " attn_accum row independent of its tile" + what);
        }
}

void check_vector_ops(const Kernels& k) {
  const Kernels& g = generic_kernels();
  for (int n : {1, 7, 8, 15, 16, 17, 64, 128, 1000}) {
    const auto a = random_floats(n);
    std::vector<uint16_t> h0(n), h1(n);
    auto big = a;
    if (n > 3) { big[0] = 70000.f; big[1] = 1e-6f; big[2] = -3e-8f; big[3] = 0.33333334f; }
    g.f32_to_f16(big.data(), h0.data(), n);
    k.f32_to_f16(big.data(), h1.data(), n);
    check(h0 == h1, std::string(k.name) + " f32_to_f16 n=" + std::to_string(n));
    std::vector<float> f0(n), f1(n);
    g.f16_to_f32(h0.data(), f0.data(), n);
    k.f16_to_f32(h0.data(), f1.data(), n);
    check(std::memcmp(f0.data(), f1.data(), sizeof(float) * n) == 0, std::string(k.name) + " f16_to_f32 n=" + std::to_string(n));
  }
}

// softmax against std::exp (in double) over the range softmax meets, at odd lengths (each table
// vectorises it at its own width): the max, every weight within 3e-7, the sum exactly the order
// kernels.h defines (16 partial sums, then halved pairwise), and all of it bit for bit the generic
// table's.
void check_softmax_exp(const Kernels& k) {
  for (int n : {1, 7, 8, 16, 17, 64, 333}) {
    std::vector<float> p(n + 1, 12345.f);
    for (int j = 0; j < n; ++j) p[j] = uniform(-80.f, 3.f);
    const int at = n / 2;
    p[at] = 3.f;  // the max
    const auto in = p;
    auto ref = p;
    float max = 0, ref_max = 0;
    const float sum = k.softmax(p.data(), n, &max);
    const float ref_sum = generic_kernels().softmax(ref.data(), n, &ref_max);
    double worst = 0;
    for (int j = 0; j < n; ++j) {
      const double e = std::exp(double(in[j] - 3.f));
      worst = std::max(worst, std::fabs(p[j] - e) / e);
    }
    float part[16] = {};
    for (int j = 0; j < n; ++j) part[j % 16] += p[j];
    for (int w = 8; w >= 1; w /= 2)
      for (int l = 0; l < w; ++l) part[l] += part[l + w];
    char what[160];
    std::snprintf(what, sizeof what, "%s softmax n=%d: max relative error %.3g, max %g, sum %.9g (in order: %.9g)",
                  k.name, n, worst, max, sum, part[0]);
    check(worst < 3e-7 && p[n] == 12345.f && max == 3.f && sum == part[0], what);
    check(p == ref && max == ref_max && std::memcmp(&sum, &ref_sum, 4) == 0,
          std::string(k.name) + " softmax n=" + std::to_string(n) + " == generic, bit for bit");
  }
}

void check_packing() {
  for (WType t : kAllTypes) {
    const int rows = 13, cols = block_elems(t) == QK_K ? 512 : 96;
    const auto gguf = random_gguf_matrix(t, rows, cols);
    std::vector<uint8_t> packed(packed_bytes(t, rows, cols));
    pack_matrix(t, gguf.data(), rows, cols, packed.data());
    bool same = true;
    std::vector<float> a(cols), b(cols);
    for (int r = 0; r < rows; ++r) {
      dequantize_gguf_row(t, gguf.data() + r * gguf_row_bytes(t, cols), a.data(), cols);
      dequantize_packed_row(t, packed.data(), cols, r, b.data());
      same &= std::memcmp(a.data(), b.data(), sizeof(float) * cols) == 0;
    }
    check(same, std::string("pack/dequantize round trip ") + type_name(t));
  }
  // fp16 conversion: every half value survives fp16 -> fp32 -> fp16.
  bool ok = true;
  for (uint32_t h = 0; h < 65536; ++h) {
    if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF)) continue;  // NaN payloads
    ok &= fp32_to_fp16(fp16_to_fp32(uint16_t(h))) == h;
  }
  check(ok, "fp16 round trip of all 65536 values");
  // The generic table's branchless conversion (attention reads fp16 through it) against the reference.
  std::vector<uint16_t> all(65536);
  for (uint32_t h = 0; h < 65536; ++h) all[h] = uint16_t(h);
  std::vector<float> conv(65536);
  generic_kernels().f16_to_f32(all.data(), conv.data(), 65536);
  ok = true;
  for (uint32_t h = 0; h < 65536; ++h) {
    const float ref = fp16_to_fp32(uint16_t(h));
    ok &= std::memcmp(&ref, &conv[h], 4) == 0;
  }
  check(ok, "generic f16_to_f32 == fp16_to_fp32 for all 65536 values, NaN payloads included");
}

void run_checks(const Kernels& k) {
  for (WType t : kAllTypes) {
    // every SIMD table has its own arithmetic for every type (none falls back to the generic kernel,
    // which `sysinfer info` would report as slower)
    check(k.own_gemm(t), std::string(k.name) + " has its own gemm for " + type_name(t));
    const bool k_quant = block_elems(t) == QK_K;  // rows of whole 256-weight super-blocks
    const std::vector<int> cols_list = k_quant ? std::vector<int>{256, 512, 768, 4352}
                                               : std::vector<int>{32, 64, 96, 576, 4128};
    for (int cols : cols_list)
      for (int n_tok : {1, 2, 3, 4, 5, 8, 9})
        check_gemm(k, t, n_tok >= 8 ? 16 : 13, cols, n_tok, n_tok == 5 ? 1 : 0);
    // Many tokens (several groups of 4 and a remainder), a tile range in the middle of the matrix.
    check_gemm(k, t, 43, k_quant ? 512 : 160, 33, 2, 1);
    // One token over many tiles: decode kernels that walk several tiles side by side, plus the tiles
    // left over, from a tile range in the middle of the matrix.
    for (int tile0 : {0, 1}) check_gemm(k, t, 8 * 11 - 3, k_quant ? 512 : 160, 1, tile0, 1);
    // every few-row step (2..8 tokens: decode's streaming walk), and 9 (prefill's: 2 passes of 4, then 1)
    for (int n_tok : {2, 3, 4, 5, 6, 7, 8, 9})
      check_decode_matches_batch(k, t, 8 * 11 - 3, k_quant ? 512 : 160, n_tok);
  }
  if (const BitTwin t = bit_twin(k); t.twin) check_bit_twin(k, *t.twin, t.types);
  check_quantize(k);
  check_softmax_exp(k);
  check_vector_ops(k);
  check_attention_ops(k);
}

// Bytes per second of a plain streaming read over `n` bytes: the ceiling for a GEMV on this machine.
double read_gbps(const uint8_t* p, size_t n) {
  const auto t0 = std::chrono::steady_clock::now();
  uint64_t s = 0;
  for (size_t i = 0; i + 8 <= n; i += 64) {
    uint64_t v;
    std::memcpy(&v, p + i, 8);  // one word per cache line: the line still has to come from memory
    s += v;
  }
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  volatile uint64_t sink = s;
  (void)sink;
  return n / sec / 1e9;
}

// Seconds per call of k.gemm on a packed matrix, best of `reps` after one warm-up call.
double time_gemm(const Kernels& k, WType type, const std::vector<uint8_t>& packed, int rows, int cols,
                 const void* x, int n_tok, int reps) {
  std::vector<float> y(size_t(padded_rows(rows)) * n_tok);
  const int tiles = padded_rows(rows) / ROW_TILE;
  k.gemm(type, packed.data(), cols, 0, tiles, x, n_tok, y.data(), padded_rows(rows));
  double best = 1e9;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    k.gemm(type, packed.data(), cols, 0, tiles, x, n_tok, y.data(), padded_rows(rows));
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

// The compiled tables this CPU runs, generic first.
std::vector<const Kernels*> runnable_tables() {
  const Kernels* all[8];
  const int n = compiled_tables(all, 8);
  const CpuFeatures f = detect_cpu_features();
  std::vector<const Kernels*> out;
  for (int i = 0; i < n; ++i)
    if (cpu_runs(*all[i], f)) out.push_back(all[i]);
  return out;
}

// Single thread. Decode: GEMV (1 token) on Llama-3-8B's FFN shape (14336 x 4096, 33 MB as Q4_0:
// larger than the caches), in GB/s of packed weights. Prefill: 64 tokens on 4096 x 4096, in
// GOPS (2 * rows * cols * tokens per second).
// A random GGUF matrix of `type`, packed, and ntok random activation rows quantized (for the benches).
struct BenchMatrix {
  std::vector<uint8_t> packed;  // [packed_bytes(type, rows, cols)]
  std::vector<float> x;         // [ntok][cols]
  std::vector<ActBlock> xq;     // [ntok][cols / QK]
  BenchMatrix(WType type, int rows, int cols, int ntok)
      : packed(packed_bytes(type, rows, cols)), x(random_floats(size_t(ntok) * cols)), xq(size_t(ntok) * cols / QK) {
    const auto gguf = random_gguf_matrix(type, rows, cols);
    pack_matrix(type, gguf.data(), rows, cols, packed.data());
    generic_kernels().quantize_act(x.data(), xq.data(), ntok * cols, act_group(type));
  }
};

void bench(bool all_types, int ntok) {
  const std::vector<const Kernels*> tables = runnable_tables();
  std::vector<WType> types = {WType::Q4_0};
  if (all_types) types = {WType::Q4_0, WType::Q4_1, WType::Q5_0,   WType::Q5_1, WType::Q8_0, WType::IQ4_NL,
                          WType::Q2_K, WType::Q3_K, WType::Q4_K,   WType::Q5_K, WType::Q6_K, WType::IQ4_XS,
                          WType::F16,  WType::BF16};
  for (WType type : types) {
    const int rows = 14336, cols = 4096, prows = 4096;
    const BenchMatrix m(type, rows, cols, ntok);
    const std::vector<uint8_t>& packed = m.packed;
    const std::vector<float>& x = m.x;
    const std::vector<ActBlock>& xq = m.xq;
    const void* in = is_quantized(type) ? static_cast<const void*>(xq.data()) : x.data();
    std::printf("%s: plain read of the %.0f MB matrix: %.1f GB/s\n", type_name(type), packed.size() / 1e6,
                read_gbps(packed.data(), packed.size()));
    for (const Kernels* k : tables) {
      const bool slow = !std::strcmp(k->name, "generic");
      const double dec = time_gemm(*k, type, packed, rows, cols, in, 1, slow ? 2 : 10);
      if (slow && ntok > 64) {  // seconds per call: not worth the wait
        std::printf("  %-13s (not timed for N > 64)\n", k->name);
        continue;
      }
      const double pre = time_gemm(*k, type, packed, prows, cols, in, ntok, slow ? 1 : 3);
      std::printf("  %-13s decode %dx%d: %7.2f ms, %5.1f GB/s | prefill %d tok %dx%d: %7.1f ms, %6.1f GOPS\n",
                  k->name, rows, cols, dec * 1e3, packed.size() / dec / 1e9, ntok, prows, cols, pre * 1e3,
                  2.0 * prows * cols * ntok / pre / 1e9);
    }
  }
}

// Single thread, one shape: N tokens through rows x cols (the model's matrices differ in how
// much of the activation fits L2: 8B's down matrix has 14336 columns). GOPS per SIMD table, from the
// thread's CPU time (best of 30 timings of ~2 ms of calls each).
void bench_gemm_shape(int rows, int cols, int ntok, WType type) {
  const BenchMatrix m(type, rows, cols, ntok);
  const std::vector<uint8_t>& packed = m.packed;
  const std::vector<ActBlock>& xq = m.xq;
  // Thread CPU time, not wall time: on a shared machine the time this thread was descheduled is left out.
  const auto cpu_now = [] {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
  };
  const int tiles = padded_rows(rows) / ROW_TILE;
  std::vector<float> y(size_t(padded_rows(rows)) * ntok);
  // float matrices take the float rows (ntok x cols), the others the quantized blocks
  const void* in = is_quantized(type) ? static_cast<const void*>(xq.data()) : m.x.data();
  for (const Kernels* k : runnable_tables()) {
    if (!std::strcmp(k->name, "generic")) continue;
    double t0 = cpu_now();
    k->gemm(type, packed.data(), cols, 0, tiles, in, ntok, y.data(), padded_rows(rows));
    // calls per timing: about 2 ms of them (a matrix that fits L2 takes microseconds a call); the best
    // of 30 timings, so that on a shared machine one falls between other processes' time slices
    const int calls = std::max(1, int(0.002 / std::max(1e-7, cpu_now() - t0)));
    double t = 1e9;
    for (int rep = 0; rep < 30; ++rep) {
      t0 = cpu_now();
      for (int c = 0; c < calls; ++c)
        k->gemm(type, packed.data(), cols, 0, tiles, in, ntok, y.data(), padded_rows(rows));
      t = std::min(t, (cpu_now() - t0) / calls);
    }
    std::printf("  %-13s %s %d tok x %dx%d: %8.3f ms, %6.1f GOPS, %5.1f GB/s of weights\n", k->name, type_name(type), ntok,
                rows, cols, t * 1e3, 2.0 * rows * cols * ntok / t / 1e9, packed.size() / t / 1e9);
  }
}

// One thread's attention over a KV cache laid out as the model lays it out ([layer][kv head][block]
// [16 slots], fp16), layer after layer, so the cache (92 MB for SmolLM2 at 4,000 keys, 128 MB for
// 8 layers of the 8B at 4,096) is larger than L3, as a long context's is: decode (one token against
// every key, one item per KV head) and a prefill item (32 tokens at the end of the context, all the
// keys they see). Milliseconds per layer (best of 5 passes), the K/V bytes read per second, and
// the attention GFLOPS (2 multiply-adds per query row, key and dim: scores and accumulation). With
// `hot`, one layer over and over: its K/V stay in L2/L3, which leaves the arithmetic.
void bench_attention(bool hot) {
  struct Shape {
    const char* name;
    int n_head, n_kv, hd, ctx, layers;
  };
  const Shape shapes[] = {{"SmolLM2-135M", 9, 3, 64, 4000, 30}, {"Llama-3-8B", 32, 8, 128, 4096, 8}};
  const int bs = 16;
  for (Shape sh : shapes) {
    if (hot) sh.layers = 1;
    const int n_blocks = (sh.ctx + bs - 1) / bs, group = sh.n_head / sh.n_kv;
    const size_t layer_elems = size_t(sh.n_kv) * n_blocks * bs * sh.hd;
    // [layers][layer_elems], on huge pages as the model's cache is
    const size_t n_elems = layer_elems * sh.layers;
    const auto kc_mem = aligned_array<uint16_t>(n_elems), vc_mem = aligned_array<uint16_t>(n_elems);
    uint16_t *kc = kc_mem.get(), *vc = vc_mem.get();
    uint32_t x = 1;
    for (size_t i = 0; i < n_elems; ++i) {  // fp16 values in about [-2, 2): sign, exponents 14..15
      x = x * 1664525u + 1013904223u;
      kc[i] = uint16_t(((x >> 16) & 0x83FF) | 0x3800 | ((x >> 5) & 0x400));
      vc[i] = uint16_t(((x >> 8) & 0x83FF) | 0x3800 | ((x >> 3) & 0x400));
    }
    std::vector<int32_t> table(n_blocks);
    for (int b = 0; b < n_blocks; ++b) table[b] = b;
    const AttnShape shape{sh.n_head, sh.n_kv, sh.hd, bs, n_blocks, 1.f / std::sqrt(float(sh.hd)), nullptr, 256};
    std::vector<float> scratch(attention_scratch_floats(shape, 32));
    for (int n_tok : {1, 32}) {
      std::vector<int32_t> positions(n_tok);
      for (int t = 0; t < n_tok; ++t) positions[t] = sh.ctx - n_tok + t;
      const auto q = random_floats(size_t(n_tok) * sh.n_head * sh.hd);
      std::vector<float> out(q.size());
      double row_keys = 0;  // query rows x keys seen, per KV head
      for (int t = 0; t < n_tok; ++t) row_keys += double(group) * (positions[t] + 1);
      const double flops = 4.0 * row_keys * sh.hd * sh.n_kv, bytes = 2.0 * sh.ctx * sh.n_kv * sh.hd * 2;
      std::printf("%s attention, %d token%s at context %d (%d heads, %d KV heads, dim %d):\n", sh.name, n_tok,
                  n_tok > 1 ? "s" : "", sh.ctx, sh.n_head, sh.n_kv, sh.hd);
      for (const Kernels* k : runnable_tables()) {
        const int passes = std::strcmp(k->name, "generic") ? (hot ? 20 : 5) : 1;
        double best = 1e9;
        for (int pass = 0; pass < passes; ++pass) {
          const auto t0 = std::chrono::steady_clock::now();
          for (int l = 0; l < sh.layers; ++l)
            for (int h = 0; h < sh.n_kv; ++h) {
              const AttnItem item{0, h, 0, n_tok, 0, sh.ctx, -1, -1};
              run_attention_item(*k, shape, item, q.data(), sh.n_head * sh.hd, positions.data(), table.data(),
                                 kc + l * layer_elems, vc + l * layer_elems, scratch.data(), out.data(),
                                 sh.n_head * sh.hd, nullptr, 0);
            }
          best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / sh.layers);
        }
        std::printf("  %-13s %8.3f ms per layer, K/V read %5.1f GB/s, %6.1f GFLOPS\n", k->name, best * 1e3,
                    bytes / best / 1e9, flops / best / 1e9);
      }
    }
  }
}

// Runs f(tid) on n_threads threads at once; seconds until the last one finishes.
template <class F>
double time_threads(int n_threads, const F& f) {
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < n_threads; ++t) threads.emplace_back(f, t);
  for (auto& t : threads) t.join();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Packed weights for the DRAM benches, on huge pages as the model's are (aligned_array): on 4 KiB
// pages (a std::vector) the Intel Xeon's Q4_0 GEMV read 29.0-29.6 GB/s against 33.3 on huge pages,
// and Q4_K 26.4-27.2 against 28.5-31.1 (`--bench-rows T 3 14336 4096`, alternating runs).
struct WeightBytes {
  std::shared_ptr<uint8_t> p;  // [n], zeroed (touched) by aligned_array
  size_t n;
  explicit WeightBytes(size_t bytes) : p(aligned_array<uint8_t>(bytes)), n(bytes) {}
  uint8_t* data() const { return p.get(); }
  size_t size() const { return n; }
};

// Decode of a big model reads every weight once per token from DRAM: GEMV over `copies` packed
// copies of the 8B FFN matrix (1 GB, beyond any L3), each thread taking half the copies, against
// the read probe `sysinfer bench` uses (over as many bytes). Best of 5 rounds, alternating, in GB/s.
void bench_dram() {
  const int rows = 14336, cols = 4096, copies = 32, n_threads = 2;
  const auto gguf = random_gguf_matrix(WType::Q4_0, rows, cols);
  const size_t bytes = packed_bytes(WType::Q4_0, rows, cols);
  const WeightBytes packed(bytes * copies);  // [copies][packed matrix]
  pack_matrix(WType::Q4_0, gguf.data(), rows, cols, packed.data());
  for (int c = 1; c < copies; ++c) std::memcpy(packed.data() + c * bytes, packed.data(), bytes);
  const auto x = random_floats(cols);
  std::vector<ActBlock> xq(cols / QK);
  generic_kernels().quantize_act(x.data(), xq.data(), cols, 1);
  const Kernels& k = select_kernels();
  std::vector<std::vector<float>> y(n_threads, std::vector<float>(padded_rows(rows)));
  const int tiles = padded_rows(rows) / ROW_TILE, per_thread = copies / n_threads;
  double gemv = 0, read = 0;
  for (int round = 0; round < 5; ++round) {
    gemv = std::max(gemv, packed.size() / 1e9 / time_threads(n_threads, [&](int t) {
      for (int c = t * per_thread; c < (t + 1) * per_thread; ++c)
        k.gemm(WType::Q4_0, packed.data() + c * bytes, cols, 0, tiles, xq.data(), 1, y[t].data(), padded_rows(rows));
    }));
    read = std::max(read, read_bandwidth_gbs(packed.size(), n_threads, 1));
  }
  std::printf("%s Q4_0 decode GEMV over %.0f MB, %d threads: %.1f GB/s; read probe: %.1f GB/s (%.0f%%)\n", k.name,
              packed.size() / 1e6, n_threads, gemv, read, 100 * gemv / read);
}

double thread_cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// What a step of r rows (tokens) costs against a step of 1, as decode of a big model sees it: the
// 8B FFN matrix of `type` in as many packed copies as make ~1 GB (beyond any L3), two threads each
// taking half the copies, gemm with r = 1, 2, 4, 8 tokens; the order of r rotates each round and each
// figure is the median of the rounds, each round's time the longer of the two threads' CPU times (on a
// shared machine, wall time would count the time other processes held the core). Prints ms per pass
// over the copies, GB/s of weights, int8 GOPS (2 * rows * cols * r per second) and the ratio to r = 1
// (the figure issue 28 sets targets for).
void bench_rows(WType type, int rounds, int rows, int cols) {
  const int n_threads = 2, rs[] = {1, 2, 4, 8};
  const auto gguf = random_gguf_matrix(type, rows, cols);
  const size_t bytes = packed_bytes(type, rows, cols);
  const int copies = std::max(2, int(1e9 / bytes) / 2 * 2);
  const WeightBytes packed(bytes * copies);  // [copies][packed matrix]
  pack_matrix(type, gguf.data(), rows, cols, packed.data());
  for (int c = 1; c < copies; ++c) std::memcpy(packed.data() + c * bytes, packed.data(), bytes);
  const auto x = random_floats(size_t(8) * cols);
  std::vector<ActBlock> xq(size_t(8) * cols / QK);  // [8 tokens][cols / QK]
  generic_kernels().quantize_act(x.data(), xq.data(), 8 * cols, act_group(type));
  const Kernels& k = select_kernels();
  std::vector<std::vector<float>> y(n_threads, std::vector<float>(size_t(padded_rows(rows)) * 8));
  const int tiles = padded_rows(rows) / ROW_TILE, per_thread = copies / n_threads;
  std::vector<double> t[4];
  for (int round = 0; round < rounds; ++round)
    for (int j = 0; j < 4; ++j) {
      const int i = (j + round) % 4, r = rs[i];
      double cpu[2] = {0, 0};  // each thread's CPU time: time descheduled on a shared machine left out
      time_threads(n_threads, [&](int th) {
        const double t0 = thread_cpu_seconds();
        for (int c = th * per_thread; c < (th + 1) * per_thread; ++c)
          k.gemm(type, packed.data() + c * bytes, cols, 0, tiles, xq.data(), r, y[th].data(), padded_rows(rows));
        cpu[th] = thread_cpu_seconds() - t0;
      });
      t[i].push_back(std::max(cpu[0], cpu[1]));
    }
  const auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  const double t1 = median(t[0]);
  std::printf("%s %s rows cost over %.0f MB (%d x %dx%d), %d threads, median of %d rounds:\n", k.name,
              type_name(type), packed.size() / 1e6, copies, rows, cols, n_threads, rounds);
  for (int i = 0; i < 4; ++i) {
    const double m = median(t[i]);
    std::printf("  r=%d: %8.2f ms  %5.1f GB/s  %6.1f GOPS  %.2fx r=1\n", rs[i], m * 1e3, packed.size() / m / 1e9,
                2.0 * rows * cols * copies * rs[i] / m / 1e9, m / t1);
  }
}

#if defined(__x86_64__)
// 12 independent vpdpbusd chains (zmm or ymm) per iteration, or 8 dependent scalar adds (one per
// cycle: the clock). Inline assembly, so this file needs no AVX-512 flags; run only where CPUID says.
#define SYSINFER_DP12(w)                                                                                       \
  "vpdpbusd %%" w "14,%%" w "15,%%" w "0\n\tvpdpbusd %%" w "14,%%" w "15,%%" w "1\n\t"                       \
  "vpdpbusd %%" w "14,%%" w "15,%%" w "2\n\tvpdpbusd %%" w "14,%%" w "15,%%" w "3\n\t"                       \
  "vpdpbusd %%" w "14,%%" w "15,%%" w "4\n\tvpdpbusd %%" w "14,%%" w "15,%%" w "5\n\t"                       \
  "vpdpbusd %%" w "14,%%" w "15,%%" w "6\n\tvpdpbusd %%" w "14,%%" w "15,%%" w "7\n\t"                       \
  "vpdpbusd %%" w "14,%%" w "15,%%" w "8\n\tvpdpbusd %%" w "14,%%" w "15,%%" w "9\n\t"                       \
  "vpdpbusd %%" w "14,%%" w "15,%%" w "10\n\tvpdpbusd %%" w "14,%%" w "15,%%" w "11\n\t"
// 12 independent vpmaddubsw ymm per iteration (AVX2's int8 multiply: 32 u8 x s8 products, added in
// pairs to 16 int16), and the pair it takes with vpaddw to accumulate (the AVX2 kernels' inner step).
#define SYSINFER_MB12                                                                                          \
  "vpmaddubsw %%ymm14,%%ymm15,%%ymm0\n\tvpmaddubsw %%ymm14,%%ymm15,%%ymm1\n\t"                               \
  "vpmaddubsw %%ymm14,%%ymm15,%%ymm2\n\tvpmaddubsw %%ymm14,%%ymm15,%%ymm3\n\t"                               \
  "vpmaddubsw %%ymm14,%%ymm15,%%ymm4\n\tvpmaddubsw %%ymm14,%%ymm15,%%ymm5\n\t"                               \
  "vpmaddubsw %%ymm14,%%ymm15,%%ymm6\n\tvpmaddubsw %%ymm14,%%ymm15,%%ymm7\n\t"                               \
  "vpmaddubsw %%ymm14,%%ymm15,%%ymm8\n\tvpmaddubsw %%ymm14,%%ymm15,%%ymm9\n\t"                               \
  "vpmaddubsw %%ymm14,%%ymm15,%%ymm10\n\tvpmaddubsw %%ymm14,%%ymm15,%%ymm11\n\t"
template <int Kind>  // 0: clock (scalar adds), 1: vpdpbusd zmm, 2: vpdpbusd ymm, 3: vpmaddubsw ymm
double per_second(long n) {
  const double t0 = thread_cpu_seconds();  // CPU time: a shared machine's other processes left out
  uint64_t x = 0, one = 1;
  for (long i = 0; i < n; ++i) {
    // Register adds: an Intel Xeon of family 6 model 167 folds a chain of `add $imm` at rename and
    // gave 21 "GHz"; a register operand keeps each add one cycle behind the last.
    if constexpr (Kind == 0)
      __asm__ volatile("add %1,%0\n\tadd %1,%0\n\tadd %1,%0\n\tadd %1,%0\n\tadd %1,%0\n\tadd %1,%0\n\t"
                       "add %1,%0\n\tadd %1,%0" : "+r"(x) : "r"(one));
    else if constexpr (Kind == 1)
      __asm__ volatile(SYSINFER_DP12("zmm") ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
                       "xmm8", "xmm9", "xmm10", "xmm11");
    else if constexpr (Kind == 2)
      __asm__ volatile(SYSINFER_DP12("ymm") ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
                       "xmm8", "xmm9", "xmm10", "xmm11");
    else
      __asm__ volatile(SYSINFER_MB12 ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
                       "xmm9", "xmm10", "xmm11");
  }
  const double sec = thread_cpu_seconds() - t0;
  return (Kind == 0 ? 8.0 : 12.0) * n / sec;
}
#undef SYSINFER_DP12
#undef SYSINFER_MB12

// The int8 peak of one core: vpdpbusd throughput per cycle x clock; each zmm vpdpbusd is 64
// multiply-adds (128 int8 ops). Best of 7 rounds (a shared machine only ever slows a round down).
void bench_peak() {
  if (!detect_cpu_features().avx512) {  // AVX2: vpmaddubsw, 32 multiplies (64 int8 ops) each
    if (!detect_cpu_features().avx2) { std::printf("neither AVX-512 VNNI nor AVX2 on this CPU\n"); return; }
    double clock = 0, mb = 0;
    for (int r = 0; r < 7; ++r) {
      clock = std::max(clock, per_second<0>(100000000));
      mb = std::max(mb, per_second<3>(20000000));
    }
    std::printf("clock %.2f GHz (dependent adds); vpmaddubsw ymm %.2f/cycle; int8 peak %.0f GOPS per core (64 ops "
                "each)\n", clock / 1e9, mb / clock, mb * 64 / 1e9);
    return;
  }
  double clock = 0, zmm = 0, ymm = 0;
  for (int r = 0; r < 7; ++r) {
    clock = std::max(clock, per_second<0>(100000000));
    zmm = std::max(zmm, per_second<1>(20000000));
    ymm = std::max(ymm, per_second<2>(20000000));
  }
  std::printf("clock %.2f GHz (dependent adds); vpdpbusd zmm %.2f/cycle, ymm %.2f/cycle; int8 peak %.0f GOPS per "
              "core (zmm: 128 ops each)\n", clock / 1e9, zmm / clock, ymm / clock, zmm * 128 / 1e9);
}
#else
void bench_peak() { std::printf("--bench-peak is for x86-64\n"); }
#endif

}  // namespace

int main(int argc, char** argv) {
  const char* expect = nullptr;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--bench-attn")) {
      bench_attention(i + 1 < argc && !std::strcmp(argv[i + 1], "hot"));
      return 0;
    }
    if (!std::strcmp(argv[i], "--bench-dram")) { bench_dram(); return 0; }
    if (!std::strcmp(argv[i], "--bench-rows")) {  // [TYPE] [ROUNDS] [ROWS COLS]
      WType type = WType::Q4_0;
      if (i + 1 < argc)
        for (WType t : kAllTypes)
          if (!std::strcmp(argv[i + 1], type_name(t))) type = t;
      const int rows = i + 4 < argc ? std::atoi(argv[i + 3]) : 14336, cols = i + 4 < argc ? std::atoi(argv[i + 4]) : 4096;
      if (rows < ROW_TILE || cols < QK_K || cols % QK_K) {
        std::fprintf(stderr, "--bench-rows: ROWS >= 8, COLS a multiple of 256\n");
        return 2;
      }
      bench_rows(type, i + 2 < argc ? std::max(1, std::atoi(argv[i + 2])) : 7, rows, cols);
      return 0;
    }
    if (!std::strcmp(argv[i], "--bench-peak")) { bench_peak(); return 0; }
    if (!std::strcmp(argv[i], "--bench-gemm") && i + 3 < argc) {
      WType type = WType::Q4_0;
      if (i + 4 < argc)
        for (WType t : kAllTypes)
          if (!std::strcmp(argv[i + 4], type_name(t))) type = t;
      bench_gemm_shape(std::atoi(argv[i + 1]), std::atoi(argv[i + 2]), std::max(1, std::atoi(argv[i + 3])), type);
      return 0;
    }
    if (!std::strcmp(argv[i], "--bench")) {
      const bool all = i + 1 < argc && !std::strcmp(argv[i + 1], "all");
      const int at = i + 1 + all;  // an optional token count for the prefill figure (64 by default)
      bench(all, at < argc ? std::max(2, std::atoi(argv[at])) : 64);
      return 0;
    }
    if (!std::strcmp(argv[i], "--expect") && i + 1 < argc) expect = argv[++i];
  }
  const CpuFeatures f = detect_cpu_features();
  std::printf("cpu: avx2=%d fma=%d f16c=%d avx512=%d neon=%d dotprod=%d i8mm=%d; selected table: %s\n", f.avx2, f.fma,
              f.f16c, f.avx512, f.neon, f.dotprod, f.i8mm, select_kernels().name);
  if (expect) check(std::strcmp(select_kernels().name, expect) == 0, std::string("selected table is ") + expect);
  check_packing();
  check_skeleton();
  check_quantize(generic_kernels());
  check_softmax_exp(generic_kernels());
  check_attention_ops(generic_kernels());
  int tested = 0;
  const Kernels* all[8];
  const int n_compiled = compiled_tables(all, 8);
  for (int i = 1; i < n_compiled; ++i) {  // all[0] is generic
    const Kernels* k = all[i];
    if (!cpu_runs(*k, f)) { std::printf("skip %s: not supported by this CPU\n", k->name); continue; }
    std::printf("checking %s against generic\n", k->name);
    run_checks(*k);
    ++tested;
  }
  std::printf("SIMD tables tested: %d\n", tested);
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}
