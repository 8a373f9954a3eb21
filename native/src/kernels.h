// The kernel contract: every arithmetic routine the model needs, as a table of function
// pointers. One table per instruction set (generic, avx2, avx512, neon, neon-dotprod, neon-i8mm); the model picks one
// at start-up from the CPU's features (the only place ISA-specific code is chosen). Every SIMD table
// has the generic table as its twin, and native/tests/test_kernels.cpp holds them equal; the SIMD
// tables share their loops (kernels_simd.h) and differ only in arithmetic.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sysinfer {

// Weight types, numbered as GGML's type ids so Python passes a GGUF tensor's type through as is.
enum class WType : int {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, IQ4_NL = 20, IQ4_XS = 23, BF16 = 30
};

constexpr int QK = 32;        // elements per 32-wide block (Q4_0 ... IQ4_NL) and per activation block
constexpr int QK_K = 256;     // elements per K-quant / IQ4_XS super-block
constexpr int ROW_TILE = 8;   // rows interleaved per packed tile, for every weight type

// The decode GEMV's software prefetch: how far ahead of the block in use each stream asks for its
// lines, and the hint (kernels_simd.h's gemv_prefetch says why these). The read probe
// (bandwidth.cpp) walks its buffer with the same prefetch, so the roofline is what this walk can read.
constexpr int kGemvPrefetchBytes = 2048;
#if defined(__x86_64__)
constexpr int kGemvPrefetchLocality = 3;  // __builtin_prefetch's: 3 = prefetcht0
#else
constexpr int kGemvPrefetchLocality = 2;  // 2 = pldl2keep
#endif

// ---- GGUF on-disk blocks (as llama.cpp's quantizer writes them) ----
struct BlockQ4_0 { uint16_t d; uint8_t qs[16]; };                    // 18 bytes; x = d*(q-8)
struct BlockQ4_1 { uint16_t d, m; uint8_t qs[16]; };                 // 20 bytes; x = d*q + m
struct BlockQ8_0 { uint16_t d; int8_t qs[32]; };                     // 34 bytes; x = d*q
struct BlockQ6_K {                                                   // 210 bytes, 256 weights
  uint8_t ql[128];  // low 4 bits
  uint8_t qh[64];   // high 2 bits
  int8_t scales[16];// one per 16 weights
  uint16_t d;       // fp16 super-block scale
};
// Nibble order in Q4_0/Q4_1 blocks: qs[j] & 0xF is element j, qs[j] >> 4 is element j + 16.
// Q5_0 / Q5_1 add a fifth bit: bit j of the little-endian uint32 qh is bit 4 of element j.
struct BlockQ5_0 { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; };     // 22 bytes; x = d*(q-16)
struct BlockQ5_1 { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; };  // 24 bytes; x = d*q + m
struct BlockIQ4_NL { uint16_t d; uint8_t qs[16]; };                  // 18 bytes; x = d*kIQ4NL[nibble]
// The K-quants: 256 weights as 8 sub-blocks of 32 (Q4_K, Q5_K: 6-bit scale and min each, packed in
// 12 bytes) or 16 of 16 (Q2_K: 4-bit scale and min; Q3_K: 6-bit signed scale).
//   Q4_K / Q5_K: qs[32c + l] & 0xF is element 64c + l, qs[32c + l] >> 4 is element 64c + 32 + l
//     (sub-blocks 2c and 2c + 1); Q5_K's bit 4 of element 32j + l is bit j of qh[l].
//     Sub-block j's scale / min (6 bits): j < 4: scales[j] & 63, scales[j + 4] & 63; j >= 4:
//     (scales[j + 4] & 15) | (scales[j - 4] >> 6) << 4, (scales[j + 4] >> 4) | (scales[j] >> 6) << 4.
//     x = d * sc * q - dmin * m.
//   Q2_K / Q3_K: element 128n + 32s + l is (qs[32n + l] >> 2s) & 3 (2 low bits); Q3_K's third bit
//     is bit 4n + s of hmask[l], and q = low - (bit ? 0 : 4). Sub-block (of 16) i = 8n + 2s + l / 16.
//     Q2_K: x = d * (scales[i] & 15) * q - dmin * (scales[i] >> 4).
//     Q3_K: x = d * (s_i - 32) * q, s_i's low 4 bits in scales[i % 8] (nibble i / 8), its high 2 bits
//     in scales[8 + i % 4] at bit 2 * (i / 4).
struct BlockQ2_K { uint8_t scales[16]; uint8_t qs[64]; uint16_t d, dmin; };               // 84 bytes
struct BlockQ3_K { uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; uint16_t d; };  // 110 bytes
struct BlockQ4_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; };              // 144 bytes
struct BlockQ5_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; };  // 176 bytes
// IQ4_XS: 8 sub-blocks of 32, each an IQ4_NL block's nibbles (qs[16j..16j+16)) with the 6-bit scale
// ls_j = (scales_l[j / 2] >> 4 (j % 2)) & 15 | ((scales_h >> 2j) & 3) << 4: x = d * (ls_j - 32) * kIQ4NL[q].
struct BlockIQ4_XS { uint16_t d; uint16_t scales_h; uint8_t scales_l[4]; uint8_t qs[128]; };  // 136 bytes
// IQ4_NL / IQ4_XS's 16 levels (a non-linear code book).
constexpr int8_t kIQ4NL[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// ---- Packed weights (made once at load by pack_matrix) ----
// A matrix of `rows` x `cols` (y = W x; GGUF's ne0 == cols) is stored as tiles of ROW_TILE rows;
// rows are padded with zeros up to padded_rows(rows). For quantized types, the tile of rows
// [8t, 8t+8) and block column kb (cols / block size of them) lives at index t * nblocks + kb.
// Quants are interleaved in 4-byte groups so one 32-byte SIMD load holds the same 4 bytes of all 8
// rows: q[g][r][k] is byte 4g + k of row r's block (for Q4: low nibble = column 4g+k, high nibble =
// column 16+4g+k, as in GGUF; for Q8_0: column 4g+k).
struct TileQ4_0 { uint16_t d[8]; uint8_t q[4][8][4]; };               // 144 bytes
struct TileQ4_1 { uint16_t d[8]; uint16_t m[8]; uint8_t q[4][8][4]; };// 160 bytes
struct TileQ8_0 { uint16_t d[8]; int8_t q[8][8][4]; };                // 272 bytes
// Q5_0 / Q5_1: the Q4 tile plus each row's 32 fifth bits, reordered at packing so one shift and mask
// give a group's bits in place: bit 8k + 4h + g of qh[r] (as a little-endian uint32) is bit 4 of row
// r's element 4g + k + 16h (g: group 0..3, k: byte 0..3, h: 0 low nibble / 1 high nibble).
struct TileQ5_0 { uint16_t d[8]; uint8_t qh[8][4]; uint8_t q[4][8][4]; };                  // 176 bytes
struct TileQ5_1 { uint16_t d[8]; uint16_t m[8]; uint8_t qh[8][4]; uint8_t q[4][8][4]; };   // 192 bytes
struct TileIQ4_NL { uint16_t d[8]; uint8_t q[4][8][4]; };              // 144 bytes, as Q4_0 (nibbles index kIQ4NL)
// Q4_K / Q5_K: one super-block column (256 weights) of 8 rows. scales[b][r] is byte b of row r's
// packed scales (a 64-bit load holds one byte of every row: the 6-bit scales and mins of all 8 rows
// unpack with a few word-wide shifts and masks). q[c][g][r][k] is byte 32c + 4g + k of row r's qs
// (low nibble: element 64c + 4g + k, high: element 64c + 32 + 4g + k). Q5_K's qh[g][r][k] is row r's
// qh[4g + k] (bit j: bit 4 of element 32j + 4g + k).
struct TileQ4_K { uint16_t d[8], dmin[8]; uint8_t scales[12][8]; uint8_t q[4][8][8][4]; };  // 1152 bytes
struct TileQ5_K {                                                                           // 1408 bytes
  uint16_t d[8], dmin[8]; uint8_t scales[12][8]; uint8_t qh[8][8][4]; uint8_t q[4][8][8][4];
};
// Q6_K: one super-block column of 8 rows, interleaved as Q4_K (a 32-byte load holds a group of 4
// columns of all 8 rows; the GGUF block's two-halves order is undone at packing). q[c][g][r][k]: low
// nibble = the low 4 bits of row r's element 64c + 4g + k, high nibble = of element 64c + 32 + 4g + k
// (sub-blocks 2c, 2c + 1). qh[h][g][r][k]: bits 2s, 2s + 1 = the high 2 bits of row r's element
// 32(4h + s) + 4g + k. scales[i][r]: row r's signed scale of elements 16i..16i+15. x = d * scale * (q - 32).
struct TileQ6_K { uint16_t d[8]; int8_t scales[16][8]; uint8_t q[4][8][8][4]; uint8_t qh[2][8][8][4]; };  // 1680 bytes
// Element e's 6-bit quant (0..63) of row r in a Q6_K tile.
inline int q6_tile_quant(const TileQ6_K& t, int r, int e) {
  const int j = e / 32, g = (e % 32) / 4, k = e % 4;
  return ((t.q[j / 2][g][r][k] >> (4 * (j % 2))) & 0xF) | ((t.qh[j / 4][g][r][k] >> (2 * (j % 4))) & 3) << 4;
}
// IQ4_XS: q[j][g][r][k] is byte 16j + 4g + k of row r's qs (sub-block j: low nibble element
// 32j + 4g + k, high nibble 32j + 16 + 4g + k), as an IQ4_NL tile per sub-block.
struct TileIQ4_XS { uint16_t d[8]; uint16_t scales_h[8]; uint8_t scales_l[4][8]; uint8_t q[8][4][8][4]; };  // 1088
// Q2_K / Q3_K: rows are whole super-blocks (not interleaved).
struct TileQ2_K { BlockQ2_K b[8]; };                                  // 672 bytes
struct TileQ3_K { BlockQ3_K b[8]; };                                  // 880 bytes
// F32, F16 and BF16 matrices are plain row-major [padded_rows][cols].

inline int padded_rows(int rows) { return (rows + ROW_TILE - 1) / ROW_TILE * ROW_TILE; }

// Whether t is one of the types above (a GGML type id from a file may be anything).
bool known_wtype(int t);
// Elements per block of type t: 1 for float types, 32, or 256 (the K-quants and IQ4_XS).
int block_elems(WType t);
// Float matrices take float activations; the others take ActBlocks.
inline bool is_float_type(WType t) { return t == WType::F32 || t == WType::F16 || t == WType::BF16; }

// ---- Activations ----
// Activations are quantized once per matmul (and shared by every row) to blocks of 32:
struct ActBlock {
  float d;          // scale: x ~= d * qs[i]
  int16_t sum[2];   // sum[h] = qs[16h] + ... + qs[16h + 15] (offsets and mins: Q4_0's -8, the K-quants' mins)
  int8_t qs[32];
};                  // 40 bytes
static_assert(sizeof(ActBlock) == 40, "ActBlock layout");

// Activation blocks that share one scale in the input of a matrix of type t (Kernels::quantize_act's
// group): 8 for Q4_K, Q5_K and Q6_K, whose SIMD kernels then sum a super-block's 8 sub-blocks in exact
// integers and take one float step per super-block and token (llama.cpp's Q8_K activations: a scale per
// 256 values), where a scale per 32 needs a float step per sub-block; 1 for the others. Every table's
// gemm of those three types requires it (x's blocks 8k .. 8k + 7 have one d); only the generic table's
// per-block arithmetic, the reference, is right either way. A matrix group's input takes the largest of its
// parts' (a file may mix Q5_0 and Q4_K in one fused Q/K/V).
inline int act_group(WType t) { return t == WType::Q4_K || t == WType::Q5_K || t == WType::Q6_K ? QK_K / QK : 1; }

struct Kernels {
  const char* name;  // "generic", "avx2", "avx512", "neon", "neon-dotprod", "neon-i8mm"

  // x[n] -> out[n / 32]; n % (32 * group) == 0. Each run of `group` blocks (1, or act_group's 8) shares
  // one scale: d = max|x| / 127 over the run's values and, in float32, s = x * (1 / d),
  // qs = trunc(s + copysign(0.5, s)) (round half away from zero; d = 0 gives qs = 0).
  void (*quantize_act)(const float* x, ActBlock* out, int n, int group);

  // y[t * ldy + r] = sum_k W[r][k] * x_t[k] for every row r of tiles [tile0, tile1) and every token
  // t < n_tok. For quantized W, x is n_tok rows of cols / 32 ActBlocks (row t starts at
  // x + t * (cols / 32)); for F32 / F16 / BF16 W, x is n_tok rows of cols floats. Writes all 8 rows
  // of each tile (padding rows give 0). cols is a multiple of block_elems(type) and of 32.
  void (*gemm)(WType type, const void* w, int cols, int tile0, int tile1, const void* x, int n_tok,
               float* y, int ldy);

  // Attention over one chunk of a KV head's paged cache, reading the fp16 K/V where they are stored:
  // each value is converted to f32 in registers as it is used (no conversion pass, no f32 copy).
  // The chunk's key j (0 <= j < n_keys) lives in block blocks[j / bs], slot j % bs, where block b of
  // the head is k + b * bs * hd (keys transposed, [hd][bs]) and v + b * bs * hd (values, [bs][hd]):
  //   scores:  s[r * lds + j] = sum_{i < hd} q[r * ldq + i] * K_j[i]       for j < n_keys
  //   accum:   acc[r * ldacc + i] = sum_{j < n_keys} p[r * ldp + j] * V_j[i]  for i < hd
  // for n_rows query rows at once. Each output element is one chain of multiply-adds from 0, in order
  // of i (scores) or j (accum), so a row's result does not depend on n_rows, on where the row sits in
  // a tile, or on the fp16 path. Reads and writes nothing outside those ranges (no key past n_keys).
  void (*attn_scores)(const float* q, int ldq, int n_rows, const uint16_t* k, const int32_t* blocks, int bs, int hd,
                      int n_keys, float* s, int lds);
  void (*attn_accum)(const float* p, int ldp, int n_rows, const uint16_t* v, const int32_t* blocks, int bs, int hd,
                     int n_keys, float* acc, int ldacc);
  void (*f16_to_f32)(const uint16_t* src, float* dst, int n);
  void (*f32_to_f16)(const float* src, uint16_t* dst, int n);  // round to nearest even

  // Softmax weights of n >= 1 scores: m = max_j p[j]; p[j] = e^(p[j] - m) (relative error < 3e-7
  // against e^x: a polynomial, not std::exp); *max = m; returns sum_j p[j] added in a fixed order
  // (16 partial sums, key j into sum j % 16 in order of j, then halved pairwise: 8, 4, 2, 1). One
  // source vectorised at each table's width, the same bits in every table.
  float (*softmax)(float* p, int n, float* max);

  // Whether gemm has this table's own arithmetic for type t (false: it runs the generic kernel's, the
  // same results slower). The generic table answers true for every type.
  bool (*own_gemm)(WType t);
};

// Kernel tables. The SIMD getters return nullptr when that table is not compiled in.
const Kernels& generic_kernels();
const Kernels* avx2_kernels();
const Kernels* avx512_kernels();  // AVX-512 F/BW/VL + VNNI
const Kernels* neon_kernels();
const Kernels* neon_dotprod_kernels();
const Kernels* neon_i8mm_kernels();  // dotprod + `smmla` (I8MM) for multi-token Q4_0 / Q4_1 / Q8_0

// What this CPU can run (checked at run time, not compile time).
// avx512: F, BW, VL and VNNI all present, and the OS saves the opmask and 512-bit register state.
// i8mm: the kernel reports HWCAP2_I8MM (Armv8.6's int8 matrix multiply, `smmla`).
struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false, avx512 = false, neon = false, dotprod = false, i8mm = false;
};
CpuFeatures detect_cpu_features();

// The best table this CPU runs; SYSINFER_KERNELS=generic|avx2|avx512|neon|neon-dotprod|neon-i8mm forces one (an
// unavailable name falls back to the best, with a warning on stderr).
const Kernels& select_kernels();
// Whether this CPU runs table k (one of the getters' tables).
bool cpu_runs(const Kernels& k, const CpuFeatures& f);
// The compiled tables (generic first, then the getters' non-null ones, best last per ISA).
int compiled_tables(const Kernels* out[], int max);

// ---- Packing and dequantization (layout only: shared by every kernel table) ----
size_t gguf_row_bytes(WType type, int cols);              // bytes of one GGUF row
size_t packed_bytes(WType type, int rows, int cols);      // bytes pack_matrix writes
// src: rows x gguf_row_bytes(type, cols) bytes as in the GGUF file; dst: packed_bytes(...) bytes.
void pack_matrix(WType type, const uint8_t* src, int rows, int cols, uint8_t* dst);
// One row of a packed matrix back to float (embedding lookup; tests).
void dequantize_packed_row(WType type, const uint8_t* packed, int cols, int row, float* dst);
// One GGUF-layout row to float (tests, reference).
void dequantize_gguf_row(WType type, const uint8_t* src, float* dst, int cols);

float fp16_to_fp32(uint16_t h);
inline float bf16_to_fp32(uint16_t h) {
  const uint32_t bits = uint32_t(h) << 16;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}
uint16_t fp32_to_fp16(float f);

}  // namespace sysinfer
