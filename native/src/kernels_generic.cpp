// The generic kernel table: plain C++, the definition every SIMD table is tested against.
// Integer dot products per block (exact), then float scaling, as the SIMD versions do.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels.h"
#include "kernels_simd.h"  // softmax: the same source in every table

namespace sysinfer {

namespace {

static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 && sizeof(BlockQ8_0) == 34, "block sizes");
static_assert(sizeof(BlockQ6_K) == 210 && sizeof(TileQ6_K) == 1680, "Q6_K sizes");
static_assert(sizeof(TileQ4_0) == 144 && sizeof(TileQ4_1) == 160 && sizeof(TileQ8_0) == 272, "tile sizes");
static_assert(sizeof(BlockQ5_0) == 22 && sizeof(BlockQ5_1) == 24 && sizeof(BlockIQ4_NL) == 18, "block sizes");
static_assert(sizeof(BlockQ2_K) == 84 && sizeof(BlockQ3_K) == 110 && sizeof(BlockQ4_K) == 144 &&
              sizeof(BlockQ5_K) == 176 && sizeof(BlockIQ4_XS) == 136, "super-block sizes");
static_assert(sizeof(TileQ5_0) == 8 * 22 && sizeof(TileQ5_1) == 8 * 24 && sizeof(TileIQ4_NL) == 8 * 18 &&
              sizeof(TileQ2_K) == 8 * 84 && sizeof(TileQ3_K) == 8 * 110 && sizeof(TileQ4_K) == 8 * 144 &&
              sizeof(TileQ5_K) == 8 * 176 && sizeof(TileIQ4_XS) == 8 * 136, "tiles hold 8 rows' blocks, no more");

void quantize_act(const float* x, ActBlock* out, int n, int group) {
  for (int b0 = 0; b0 < n / QK; b0 += group) {
    float amax = 0.f;
    for (int i = 0; i < QK * group; ++i) amax = std::max(amax, std::fabs(x[b0 * QK + i]));
    const float d = amax / 127.f, inv = d > 0.f ? 1.f / d : 0.f;
    for (int b = b0; b < b0 + group; ++b) {
      const float* xb = x + b * QK;
      ActBlock& o = out[b];
      o.d = d;
      int sums[2] = {0, 0};
      for (int i = 0; i < QK; ++i) {
        const float scaled = xb[i] * inv;
        const int q = int(std::trunc(scaled + std::copysign(0.5f, scaled)));  // half away from zero
        o.qs[i] = int8_t(q);
        sums[i / 16] += q;
      }
      o.sum[0] = int16_t(sums[0]);
      o.sum[1] = int16_t(sums[1]);
    }
  }
}

// sum_j w4[j] * a[j] over the 32 nibbles of row r of an interleaved Q4 tile (unsigned 0..15).
inline int dot_nibbles(const uint8_t (*q)[8][4], int r, const int8_t* a) {
  int s = 0;
  for (int j = 0; j < 16; ++j) {
    const uint8_t byte = q[j / 4][r][j % 4];
    s += int(byte & 0xF) * a[j] + int(byte >> 4) * a[j + 16];
  }
  return s;
}

float row_dot_q4_0(const TileQ4_0* tiles, int r, int nb, const ActBlock* x) {
  float acc = 0.f;
  for (int kb = 0; kb < nb; ++kb) {
    const TileQ4_0& t = tiles[kb];
    const int dot = dot_nibbles(t.q, r, x[kb].qs) - 8 * (x[kb].sum[0] + x[kb].sum[1]);
    acc += fp16_to_fp32(t.d[r]) * x[kb].d * float(dot);
  }
  return acc;
}

float row_dot_q4_1(const TileQ4_1* tiles, int r, int nb, const ActBlock* x) {
  float acc = 0.f;
  for (int kb = 0; kb < nb; ++kb) {
    const TileQ4_1& t = tiles[kb];
    const int dot = dot_nibbles(t.q, r, x[kb].qs);
    const int sum = x[kb].sum[0] + x[kb].sum[1];
    acc += x[kb].d * (fp16_to_fp32(t.d[r]) * float(dot) + fp16_to_fp32(t.m[r]) * float(sum));
  }
  return acc;
}

float row_dot_q8_0(const TileQ8_0* tiles, int r, int nb, const ActBlock* x) {
  float acc = 0.f;
  for (int kb = 0; kb < nb; ++kb) {
    int dot = 0;
    for (int j = 0; j < QK; ++j) dot += int(tiles[kb].q[j / 4][r][j % 4]) * x[kb].qs[j];
    acc += fp16_to_fp32(tiles[kb].d[r]) * x[kb].d * float(dot);
  }
  return acc;
}

// Q6_K: activation block j (32 weights) meets the two 16-weight scales of sub-block j; the -32 offset
// is -32 * the activation's half sums; the integer sum of both halves is scaled by a_j.d.
float row_dot_q6_k(const TileQ6_K* tiles, int r, int nsb, const ActBlock* x) {
  float acc = 0.f;
  for (int sb = 0; sb < nsb; ++sb) {
    const TileQ6_K& t = tiles[sb];
    float sa = 0.f;  // sum over the super-block's activation blocks of a.d * (scaled int dots)
    for (int j = 0; j < 8; ++j) {
      const ActBlock& a = x[sb * 8 + j];
      int sub = 0;
      for (int h = 0; h < 2; ++h) {
        int dot = -32 * a.sum[h];
        for (int l = 16 * h; l < 16 * h + 16; ++l) dot += q6_tile_quant(t, r, 32 * j + l) * a.qs[l];
        sub += t.scales[2 * j + h][r] * dot;
      }
      sa += a.d * float(sub);
    }
    acc += fp16_to_fp32(t.d[r]) * sa;
  }
  return acc;
}

// ---- the other quantized types, through one form ----
//
// One row's block of any of them as integers: element e is d * sc[e / 16] * q[e] - dmin * mn[e / 16]
// (1 or 8 sub-blocks of 32; scales and mins per 16 elements). The dot product with activation blocks
// a_j is then, per 32-element sub-block j, two exact integer sums folded in float:
//   d * sum_j a_j.d * (sum_h sc[2j+h] * q.a_j over half h)  -  dmin * sum_j a_j.d * (sum_h mn[2j+h] * a_j.sum[h])
// which is how the SIMD kernels compute it (mins by the activation half sums: no Q8_K needed).
struct Decoded {
  int n_sub = 1;         // 32-element sub-blocks: 1, or 8 for a 256-element super-block
  int8_t q[QK_K];        // [n_sub * 32]
  int sc[16], mn[16];    // per 16 elements
  float d = 0, dmin = 0;
};

inline void set_sub(Decoded& o, int j, int sc, int mn) {  // sub-block j's two halves share sc / mn
  o.sc[2 * j] = o.sc[2 * j + 1] = sc;
  o.mn[2 * j] = o.mn[2 * j + 1] = mn;
}

// Q5_0 / Q5_1 element e's 5-bit quant from a tile (kernels.h's bit order).
inline int q5_tile_quant(const uint8_t (*q)[8][4], const uint8_t* qh, int r, int e) {
  const int h = e / 16, g = (e % 16) / 4, k = e % 4;
  const uint8_t byte = q[g][r][k];
  const int low = h ? byte >> 4 : byte & 0xF;
  return low | ((qh[k] >> (4 * h + g)) & 1) << 4;
}

// Sub-block j's 6-bit scale and min from a K tile's scale column (byte b of row r at s[b][r]).
inline void k_tile_scale_min(const uint8_t (*s)[8], int r, int j, int* sc, int* m) {
  if (j < 4) {
    *sc = s[j][r] & 63;
    *m = s[j + 4][r] & 63;
  } else {
    *sc = (s[j + 4][r] & 0xF) | ((s[j - 4][r] >> 6) << 4);
    *m = (s[j + 4][r] >> 4) | ((s[j][r] >> 6) << 4);
  }
}

void decode(WType type, const uint8_t* tile, int r, Decoded& o) {
  switch (type) {
    case WType::Q5_0: case WType::Q5_1: {
      const bool q5_1 = type == WType::Q5_1;
      const auto& t0 = *reinterpret_cast<const TileQ5_0*>(tile);
      const auto& t1 = *reinterpret_cast<const TileQ5_1*>(tile);
      const uint8_t(*q)[8][4] = q5_1 ? t1.q : t0.q;
      const uint8_t* qh = q5_1 ? t1.qh[r] : t0.qh[r];
      for (int e = 0; e < QK; ++e) o.q[e] = int8_t(q5_tile_quant(q, qh, r, e));
      o.d = fp16_to_fp32(q5_1 ? t1.d[r] : t0.d[r]);
      o.dmin = q5_1 ? -fp16_to_fp32(t1.m[r]) : o.d;  // Q5_1: x = d*q + m; Q5_0: x = d*q - d*16
      set_sub(o, 0, 1, q5_1 ? 1 : 16);
      return;
    }
    case WType::IQ4_NL: {
      const auto& t = *reinterpret_cast<const TileIQ4_NL*>(tile);
      for (int j = 0; j < 16; ++j) {
        const uint8_t byte = t.q[j / 4][r][j % 4];
        o.q[j] = kIQ4NL[byte & 0xF];
        o.q[j + 16] = kIQ4NL[byte >> 4];
      }
      o.d = fp16_to_fp32(t.d[r]);
      set_sub(o, 0, 1, 0);
      return;
    }
    case WType::Q4_K: case WType::Q5_K: {
      const bool q5 = type == WType::Q5_K;
      const auto& t4 = *reinterpret_cast<const TileQ4_K*>(tile);
      const auto& t5 = *reinterpret_cast<const TileQ5_K*>(tile);
      const uint8_t(*q)[8][8][4] = q5 ? t5.q : t4.q;
      const uint8_t(*s)[8] = q5 ? t5.scales : t4.scales;
      o.n_sub = 8;
      for (int j = 0; j < 8; ++j) {
        int sc, m;
        k_tile_scale_min(s, r, j, &sc, &m);
        set_sub(o, j, sc, m);
        for (int l = 0; l < 32; ++l) {
          const uint8_t byte = q[j / 2][l / 4][r][l % 4];
          int v = j % 2 ? byte >> 4 : byte & 0xF;
          if (q5) v |= ((t5.qh[l / 4][r][l % 4] >> j) & 1) << 4;
          o.q[32 * j + l] = int8_t(v);
        }
      }
      o.d = fp16_to_fp32(q5 ? t5.d[r] : t4.d[r]);
      o.dmin = fp16_to_fp32(q5 ? t5.dmin[r] : t4.dmin[r]);
      return;
    }
    case WType::IQ4_XS: {
      const auto& t = *reinterpret_cast<const TileIQ4_XS*>(tile);
      o.n_sub = 8;
      for (int j = 0; j < 8; ++j) {
        const int ls = ((t.scales_l[j / 2][r] >> (4 * (j % 2))) & 0xF) | (((t.scales_h[r] >> (2 * j)) & 3) << 4);
        set_sub(o, j, ls - 32, 0);
        for (int l = 0; l < 16; ++l) {
          const uint8_t byte = t.q[j][l / 4][r][l % 4];
          o.q[32 * j + l] = kIQ4NL[byte & 0xF];
          o.q[32 * j + 16 + l] = kIQ4NL[byte >> 4];
        }
      }
      o.d = fp16_to_fp32(t.d[r]);
      return;
    }
    case WType::Q2_K: case WType::Q3_K: {
      const bool q3 = type == WType::Q3_K;
      const BlockQ2_K& b2 = reinterpret_cast<const TileQ2_K*>(tile)->b[r];
      const BlockQ3_K& b3 = reinterpret_cast<const TileQ3_K*>(tile)->b[r];
      o.n_sub = 8;
      for (int e = 0; e < QK_K; ++e) {
        const int n = e / 128, s = (e % 128) / 32, l = e % 32;
        const int low = ((q3 ? b3.qs : b2.qs)[32 * n + l] >> (2 * s)) & 3;
        o.q[e] = int8_t(q3 ? low - ((b3.hmask[l] >> (4 * n + s)) & 1 ? 0 : 4) : low);
      }
      for (int i = 0; i < 16; ++i) {
        if (q3) {
          o.sc[i] = (((b3.scales[i % 8] >> (4 * (i / 8))) & 0xF) | (((b3.scales[8 + i % 4] >> (2 * (i / 4))) & 3) << 4)) - 32;
          o.mn[i] = 0;
        } else {
          o.sc[i] = b2.scales[i] & 0xF;
          o.mn[i] = b2.scales[i] >> 4;
        }
      }
      o.d = fp16_to_fp32(q3 ? b3.d : b2.d);
      o.dmin = q3 ? 0.f : fp16_to_fp32(b2.dmin);
      return;
    }
    default:
      return;
  }
}

// Row r of nb consecutive tiles (tile_bytes apart) times activation blocks x, through Decoded.
float row_dot_decoded(WType type, const uint8_t* tiles, size_t tile_bytes, int r, int nb, const ActBlock* x) {
  float acc = 0.f;
  Decoded o;
  for (int kb = 0; kb < nb; ++kb) {
    decode(type, tiles + kb * tile_bytes, r, o);
    float sa = 0.f, sm = 0.f;
    for (int j = 0; j < o.n_sub; ++j) {
      const ActBlock& a = x[kb * o.n_sub + j];
      int dot = 0, mins = 0;
      for (int h = 0; h < 2; ++h) {
        int s = 0;
        for (int l = 0; l < 16; ++l) s += int(o.q[32 * j + 16 * h + l]) * a.qs[16 * h + l];
        dot += o.sc[2 * j + h] * s;
        mins += o.mn[2 * j + h] * a.sum[h];
      }
      sa += a.d * float(dot);
      sm += a.d * float(mins);
    }
    acc += o.d * sa - o.dmin * sm;
  }
  return acc;
}

size_t decoded_tile_bytes(WType t) {
  switch (t) {
    case WType::Q5_0: return sizeof(TileQ5_0);
    case WType::Q5_1: return sizeof(TileQ5_1);
    case WType::IQ4_NL: return sizeof(TileIQ4_NL);
    case WType::Q2_K: return sizeof(TileQ2_K);
    case WType::Q3_K: return sizeof(TileQ3_K);
    case WType::Q4_K: return sizeof(TileQ4_K);
    case WType::Q5_K: return sizeof(TileQ5_K);
    case WType::IQ4_XS: return sizeof(TileIQ4_XS);
    default: return 0;
  }
}

void gemm(WType type, const void* w, int cols, int tile0, int tile1, const void* x, int n_tok, float* y, int ldy) {
  const int nb = cols / QK;
  for (int t = tile0; t < tile1; ++t) {
    for (int tok = 0; tok < n_tok; ++tok) {
      const ActBlock* xa = static_cast<const ActBlock*>(x) + size_t(tok) * nb;
      const float* xf = static_cast<const float*>(x) + size_t(tok) * cols;
      float* out = y + size_t(tok) * ldy + size_t(t) * ROW_TILE;
      for (int r = 0; r < ROW_TILE; ++r) {
        const size_t row = size_t(t) * ROW_TILE + r;
        switch (type) {
          case WType::Q4_0:
            out[r] = row_dot_q4_0(static_cast<const TileQ4_0*>(w) + size_t(t) * nb, r, nb, xa);
            break;
          case WType::Q4_1:
            out[r] = row_dot_q4_1(static_cast<const TileQ4_1*>(w) + size_t(t) * nb, r, nb, xa);
            break;
          case WType::Q8_0:
            out[r] = row_dot_q8_0(static_cast<const TileQ8_0*>(w) + size_t(t) * nb, r, nb, xa);
            break;
          case WType::Q6_K:
            out[r] = row_dot_q6_k(static_cast<const TileQ6_K*>(w) + size_t(t) * (cols / QK_K), r, cols / QK_K, xa);
            break;
          case WType::F32: {
            const float* wr = static_cast<const float*>(w) + row * cols;
            float s = 0.f;
            for (int k = 0; k < cols; ++k) s += wr[k] * xf[k];
            out[r] = s;
            break;
          }
          case WType::F16: case WType::BF16: {
            const uint16_t* wr = static_cast<const uint16_t*>(w) + row * cols;
            const bool bf = type == WType::BF16;
            float s = 0.f;
            for (int k = 0; k < cols; ++k) s += (bf ? bf16_to_fp32(wr[k]) : fp16_to_fp32(wr[k])) * xf[k];
            out[r] = s;
            break;
          }
          default: {  // Q5_0, Q5_1, IQ4_NL, Q2_K ... IQ4_XS
            const int nbt = cols / block_elems(type);
            const size_t tb = decoded_tile_bytes(type);
            out[r] = row_dot_decoded(type, static_cast<const uint8_t*>(w) + size_t(t) * nbt * tb, tb, r, nbt, xa);
            break;
          }
        }
      }
    }
  }
}

// fp16 -> f32 without branches (vectorisable; the same values as fp16_to_fp32, which test_kernels
// checks over all 65536): normal numbers re-biased in place, subnormals as their integer mantissa
// times 2^-24 (exact, and no subnormal float arithmetic, which flush-to-zero modes would change),
// infinities and NaNs with their payload.
inline float half_to_float(uint16_t h) {
  const uint32_t e = (h >> 10) & 0x1F, m = h & 0x3FF;
  const float sub = float(m) * 0x1p-24f;
  uint32_t sub_bits;
  std::memcpy(&sub_bits, &sub, 4);
  uint32_t bits = e == 0 ? sub_bits : e == 0x1F ? 0x7F800000u | (m << 13) : ((e + 112) << 23) | (m << 13);
  bits |= uint32_t(h & 0x8000) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Attention over one chunk of the paged cache (kernels.h); each output one chain in order of i
// (scores) or j (accum), as in the SIMD tables. Plain C++ has no vector registers to convert into:
// each fp16 value is converted once per call into a few floats on the stack (a key row of a block,
// a piece of a value row) and used there by every row, so the rows' loops stay contiguous and in L1.
constexpr int kPiece = 64;  // floats converted at a time

void attn_scores(const float* q, int ldq, int n_rows, const uint16_t* k, const int32_t* blocks, int bs, int hd,
                 int n_keys, float* s, int lds) {
  float key[kPiece];  // dim i of keys [j0, j0 + n) of one block
  for (int b = 0; b * bs < n_keys; ++b) {
    const uint16_t* kb = k + size_t(blocks[b]) * bs * hd;  // [hd][bs]
    const int nb = std::min(bs, n_keys - b * bs);
    for (int s0 = 0; s0 < nb; s0 += kPiece) {
      const int j0 = b * bs + s0, n = std::min(kPiece, nb - s0);
      for (int r = 0; r < n_rows; ++r)
        for (int j = 0; j < n; ++j) s[size_t(r) * lds + j0 + j] = 0.f;
      for (int i = 0; i < hd; ++i) {
        for (int j = 0; j < n; ++j) key[j] = half_to_float(kb[size_t(i) * bs + s0 + j]);
        for (int r = 0; r < n_rows; ++r) {
          const float qi = q[size_t(r) * ldq + i];
          float* sr = s + size_t(r) * lds + j0;
          for (int j = 0; j < n; ++j) sr[j] += qi * key[j];
        }
      }
    }
  }
}

void attn_accum(const float* p, int ldp, int n_rows, const uint16_t* v, const int32_t* blocks, int bs, int hd,
                int n_keys, float* acc, int ldacc) {
  float value[kPiece];  // dims [i0, i0 + n) of value row j
  for (int i0 = 0; i0 < hd; i0 += kPiece) {
    const int n = std::min(kPiece, hd - i0);
    for (int r = 0; r < n_rows; ++r)
      for (int i = 0; i < n; ++i) acc[size_t(r) * ldacc + i0 + i] = 0.f;
    for (int j = 0; j < n_keys; ++j) {
      const uint16_t* vj = v + size_t(blocks[j / bs]) * bs * hd + size_t(j % bs) * hd + i0;
      for (int i = 0; i < n; ++i) value[i] = half_to_float(vj[i]);
      for (int r = 0; r < n_rows; ++r) {
        const float pj = p[size_t(r) * ldp + j];
        float* ar = acc + size_t(r) * ldacc + i0;
        for (int i = 0; i < n; ++i) ar[i] += pj * value[i];
      }
    }
  }
}

void f16_to_f32(const uint16_t* src, float* dst, int n) {
  for (int i = 0; i < n; ++i) dst[i] = half_to_float(src[i]);
}

void f32_to_f16(const float* src, uint16_t* dst, int n) {
  for (int i = 0; i < n; ++i) dst[i] = fp32_to_fp16(src[i]);
}

bool own_gemm(WType t) { return known_wtype(int(t)); }

const Kernels kGeneric = {"generic", quantize_act, gemm, attn_scores, attn_accum, f16_to_f32, f32_to_f16, softmax,
                          own_gemm};

}  // namespace

const Kernels& generic_kernels() { return kGeneric; }

}  // namespace sysinfer
