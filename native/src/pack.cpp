// Weight layouts: GGUF rows -> row-interleaved tiles (kernels.h), and back to float.
#include <cstddef>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels.h"

namespace sysinfer {

float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while (!(mant & 0x400)) { mant <<= 1; --exp; }
      bits = sign | (exp << 23) | ((mant & 0x3FF) << 13);
    }
  } else if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t fp32_to_fp16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000);
  const uint32_t abs = x & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) return sign | 0x7C00 | (abs > 0x7F800000u ? 0x200 : 0);  // inf / nan
  if (abs >= 0x477FF000u) return sign | 0x7C00;                                   // overflow
  if (abs < 0x38800000u) {  // subnormal or zero in fp16: round x * 2^24 to an integer
    if (abs < 0x33000000u) return sign;
    const uint32_t mant = (abs & 0x7FFFFF) | 0x800000;
    const int shift = 126 - int(abs >> 23);  // 14..24
    const uint32_t half = 1u << (shift - 1), rest = mant & ((1u << shift) - 1);
    uint32_t r = mant >> shift;
    if (rest > half || (rest == half && (r & 1))) ++r;
    return sign | uint16_t(r);
  }
  // Normal: drop 13 mantissa bits with round to nearest even (carry may bump the exponent).
  uint32_t r = abs - 0x38000000u;  // rebias exponent 127 -> 15
  const uint32_t rest = r & 0x1FFF;
  r >>= 13;
  if (rest > 0x1000 || (rest == 0x1000 && (r & 1))) ++r;
  return sign | uint16_t(r);
}

namespace {

size_t gguf_block_bytes(WType t) {
  switch (t) {
    case WType::F32: return 4;
    case WType::F16: case WType::BF16: return 2;
    case WType::Q4_0: return sizeof(BlockQ4_0);
    case WType::Q4_1: return sizeof(BlockQ4_1);
    case WType::Q5_0: return sizeof(BlockQ5_0);
    case WType::Q5_1: return sizeof(BlockQ5_1);
    case WType::Q8_0: return sizeof(BlockQ8_0);
    case WType::IQ4_NL: return sizeof(BlockIQ4_NL);
    case WType::Q2_K: return sizeof(BlockQ2_K);
    case WType::Q3_K: return sizeof(BlockQ3_K);
    case WType::Q4_K: return sizeof(BlockQ4_K);
    case WType::Q5_K: return sizeof(BlockQ5_K);
    case WType::Q6_K: return sizeof(BlockQ6_K);
    case WType::IQ4_XS: return sizeof(BlockIQ4_XS);
  }
  throw std::invalid_argument("unknown weight type");
}

size_t tile_bytes(WType t) {
  switch (t) {
    case WType::Q4_0: return sizeof(TileQ4_0);
    case WType::Q4_1: return sizeof(TileQ4_1);
    case WType::Q5_0: return sizeof(TileQ5_0);
    case WType::Q5_1: return sizeof(TileQ5_1);
    case WType::Q8_0: return sizeof(TileQ8_0);
    case WType::IQ4_NL: return sizeof(TileIQ4_NL);
    case WType::Q2_K: return sizeof(TileQ2_K);
    case WType::Q3_K: return sizeof(TileQ3_K);
    case WType::Q4_K: return sizeof(TileQ4_K);
    case WType::Q5_K: return sizeof(TileQ5_K);
    case WType::Q6_K: return sizeof(TileQ6_K);
    case WType::IQ4_XS: return sizeof(TileIQ4_XS);
    default: return 0;
  }
}

// Q5's fifth bits: GGUF order (bit e of element e) <-> tile order (kernels.h: bit 8k + 4h + g of
// element 4g + k + 16h).
inline int q5_tile_bit(int e) {
  const int h = e / 16, g = (e % 16) / 4, k = e % 4;
  return 8 * k + 4 * h + g;
}
void q5_bits_to_tile(const uint8_t* gguf_qh, uint8_t* tile_qh) {
  uint32_t in, out = 0;
  std::memcpy(&in, gguf_qh, 4);
  for (int e = 0; e < 32; ++e) out |= ((in >> e) & 1u) << q5_tile_bit(e);
  std::memcpy(tile_qh, &out, 4);
}
void q5_bits_from_tile(const uint8_t* tile_qh, uint8_t* gguf_qh) {
  uint32_t in, out = 0;
  std::memcpy(&in, tile_qh, 4);
  for (int e = 0; e < 32; ++e) out |= ((in >> q5_tile_bit(e)) & 1u) << e;
  std::memcpy(gguf_qh, &out, 4);
}

// Interleaved quant bytes: n groups of 4 bytes of row r (src) <-> q[g][r][k] (8 rows of 4 per group).
void interleave(const uint8_t* src, int groups, int r, uint8_t* q) {
  for (int g = 0; g < groups; ++g) std::memcpy(q + (g * ROW_TILE + r) * 4, src + 4 * g, 4);
}
void deinterleave(const uint8_t* q, int groups, int r, uint8_t* dst) {
  for (int g = 0; g < groups; ++g) std::memcpy(dst + 4 * g, q + (g * ROW_TILE + r) * 4, 4);
}
// Bytes of a column [n][8]: one byte of every row per entry.
void to_column(const uint8_t* src, int n, int r, uint8_t* col) {
  for (int i = 0; i < n; ++i) col[i * ROW_TILE + r] = src[i];
}
void from_column(const uint8_t* col, int n, int r, uint8_t* dst) {
  for (int i = 0; i < n; ++i) dst[i] = col[i * ROW_TILE + r];
}

// Row r's Q6_K block into its tile (to_tile; the tile's quant bytes start at 0) or back (the block is
// rewritten whole). GGUF's element e = 128n + 32s + l: low 4 bits in ql[64n + 32(s % 2) + l] (nibble
// s / 2), high 2 in qh[32n + l] (bits 2s); the tile's order is kernels.h's.
void q6_move(BlockQ6_K& b, TileQ6_K& t, int r, bool to_tile) {
  if (to_tile) {
    t.d[r] = b.d;
    for (int i = 0; i < 16; ++i) t.scales[i][r] = b.scales[i];
  } else {
    b.d = t.d[r];
    for (int i = 0; i < 16; ++i) b.scales[i] = t.scales[i][r];
    std::memset(b.ql, 0, sizeof b.ql);
    std::memset(b.qh, 0, sizeof b.qh);
  }
  for (int e = 0; e < QK_K; ++e) {
    const int n = e / 128, s = (e % 128) / 32, l = e % 32, j = e / 32, g = l / 4, k = l % 4;
    uint8_t& ql = b.ql[64 * n + 32 * (s % 2) + l];
    uint8_t& qh = b.qh[32 * n + l];
    if (to_tile) {
      const int low = (ql >> (4 * (s / 2))) & 0xF, high = (qh >> (2 * s)) & 3;
      t.q[j / 2][g][r][k] |= uint8_t(low << (4 * (j % 2)));
      t.qh[j / 4][g][r][k] |= uint8_t(high << (2 * (j % 4)));
    } else {
      const int q = q6_tile_quant(t, r, e);
      ql |= uint8_t((q & 0xF) << (4 * (s / 2)));
      qh |= uint8_t((q >> 4) << (2 * s));
    }
  }
}

// One GGUF block of row r (0..7) copied into its tile (to_tile) or back (!to_tile). The interleaved
// layouts are kernels.h's; rows of whole blocks (Q2_K, Q3_K) are copied as they are.
void move_block(WType t, uint8_t* block, int r, uint8_t* tile, bool to_tile) {
  auto field = [&](void* in_tile, void* in_block, size_t n) {
    if (to_tile) std::memcpy(in_tile, in_block, n);
    else std::memcpy(in_block, in_tile, n);
  };
  auto quants = [&](uint8_t* q, uint8_t* qs, int groups) {
    if (to_tile) interleave(qs, groups, r, q);
    else deinterleave(q, groups, r, qs);
  };
  auto column = [&](uint8_t* col, uint8_t* bytes, int n) {
    if (to_tile) to_column(bytes, n, r, col);
    else from_column(col, n, r, bytes);
  };
  auto q5_bits = [&](uint8_t* tile_qh, uint8_t* gguf_qh) {
    if (to_tile) q5_bits_to_tile(gguf_qh, tile_qh);
    else q5_bits_from_tile(tile_qh, gguf_qh);
  };
  switch (t) {
    case WType::Q4_0: {
      auto* b = reinterpret_cast<BlockQ4_0*>(block);
      auto* d = reinterpret_cast<TileQ4_0*>(tile);
      field(&d->d[r], &b->d, 2);
      quants(reinterpret_cast<uint8_t*>(&d->q), block + offsetof(BlockQ4_0, qs), 4);
      break;
    }
    case WType::IQ4_NL: {
      auto* b = reinterpret_cast<BlockIQ4_NL*>(block);
      auto* d = reinterpret_cast<TileIQ4_NL*>(tile);
      field(&d->d[r], &b->d, 2);
      quants(reinterpret_cast<uint8_t*>(&d->q), block + offsetof(BlockIQ4_NL, qs), 4);
      break;
    }
    case WType::Q4_1: {
      auto* b = reinterpret_cast<BlockQ4_1*>(block);
      auto* d = reinterpret_cast<TileQ4_1*>(tile);
      field(&d->d[r], &b->d, 2);
      field(&d->m[r], &b->m, 2);
      quants(reinterpret_cast<uint8_t*>(&d->q), block + offsetof(BlockQ4_1, qs), 4);
      break;
    }
    case WType::Q5_0: {
      auto* b = reinterpret_cast<BlockQ5_0*>(block);
      auto* d = reinterpret_cast<TileQ5_0*>(tile);
      field(&d->d[r], &b->d, 2);
      q5_bits(d->qh[r], b->qh);
      quants(reinterpret_cast<uint8_t*>(&d->q), block + offsetof(BlockQ5_0, qs), 4);
      break;
    }
    case WType::Q5_1: {
      auto* b = reinterpret_cast<BlockQ5_1*>(block);
      auto* d = reinterpret_cast<TileQ5_1*>(tile);
      field(&d->d[r], &b->d, 2);
      field(&d->m[r], &b->m, 2);
      q5_bits(d->qh[r], b->qh);
      quants(reinterpret_cast<uint8_t*>(&d->q), block + offsetof(BlockQ5_1, qs), 4);
      break;
    }
    case WType::Q8_0: {
      auto* b = reinterpret_cast<BlockQ8_0*>(block);
      auto* d = reinterpret_cast<TileQ8_0*>(tile);
      field(&d->d[r], &b->d, 2);
      quants(reinterpret_cast<uint8_t*>(&d->q), block + offsetof(BlockQ8_0, qs), 8);
      break;
    }
    case WType::Q4_K: {
      auto* b = reinterpret_cast<BlockQ4_K*>(block);
      auto* d = reinterpret_cast<TileQ4_K*>(tile);
      field(&d->d[r], &b->d, 2);
      field(&d->dmin[r], &b->dmin, 2);
      column(reinterpret_cast<uint8_t*>(&d->scales), block + offsetof(BlockQ4_K, scales), 12);
      quants(reinterpret_cast<uint8_t*>(&d->q), block + offsetof(BlockQ4_K, qs), 32);
      break;
    }
    case WType::Q5_K: {
      auto* b = reinterpret_cast<BlockQ5_K*>(block);
      auto* d = reinterpret_cast<TileQ5_K*>(tile);
      field(&d->d[r], &b->d, 2);
      field(&d->dmin[r], &b->dmin, 2);
      column(reinterpret_cast<uint8_t*>(&d->scales), block + offsetof(BlockQ5_K, scales), 12);
      quants(reinterpret_cast<uint8_t*>(&d->qh), block + offsetof(BlockQ5_K, qh), 8);
      quants(reinterpret_cast<uint8_t*>(&d->q), block + offsetof(BlockQ5_K, qs), 32);
      break;
    }
    case WType::IQ4_XS: {
      auto* b = reinterpret_cast<BlockIQ4_XS*>(block);
      auto* d = reinterpret_cast<TileIQ4_XS*>(tile);
      field(&d->d[r], &b->d, 2);
      field(&d->scales_h[r], &b->scales_h, 2);
      column(reinterpret_cast<uint8_t*>(&d->scales_l), block + offsetof(BlockIQ4_XS, scales_l), 4);
      quants(reinterpret_cast<uint8_t*>(&d->q), block + offsetof(BlockIQ4_XS, qs), 32);
      break;
    }
    case WType::Q2_K:
      field(&reinterpret_cast<TileQ2_K*>(tile)->b[r], block, sizeof(BlockQ2_K));
      break;
    case WType::Q3_K:
      field(&reinterpret_cast<TileQ3_K*>(tile)->b[r], block, sizeof(BlockQ3_K));
      break;
    case WType::Q6_K:
      q6_move(*reinterpret_cast<BlockQ6_K*>(block), *reinterpret_cast<TileQ6_K*>(tile), r, to_tile);
      break;
    case WType::F32: case WType::F16: case WType::BF16:
      break;
  }
}

// ---- GGUF blocks to float, in the same float operations as gguf-py's dequantize (so the results
// are the same bits; tests/native/test_quant_types.py holds them equal). ----
// (This file is compiled with -ffp-contract=off: d * q + m must round twice, as numpy does.)

void dequantize_q6_k(const BlockQ6_K& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  for (int half = 0; half < 2; ++half) {
    const uint8_t* ql = b.ql + 64 * half;
    const uint8_t* qh = b.qh + 32 * half;
    const int8_t* sc = b.scales + 8 * half;
    float* out = y + 128 * half;
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = int((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
      const int q2 = int((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = int((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = int((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      out[l] = d * sc[is] * q1;
      out[l + 32] = d * sc[is + 2] * q2;
      out[l + 64] = d * sc[is + 4] * q3;
      out[l + 96] = d * sc[is + 6] * q4;
    }
  }
}

// Element e's 5-bit quant of a Q5_0 / Q5_1 block.
inline int q5_quant(const uint8_t* qs, const uint8_t* qh, int e) {
  uint32_t bits;
  std::memcpy(&bits, qh, 4);
  const int low = e < 16 ? (qs[e] & 0xF) : (qs[e - 16] >> 4);
  return low | int((bits >> e) & 1) << 4;
}

void dequantize_q5_0(const BlockQ5_0& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  for (int e = 0; e < QK; ++e) y[e] = d * float(q5_quant(b.qs, b.qh, e) - 16);
}

void dequantize_q5_1(const BlockQ5_1& b, float* y) {
  const float d = fp16_to_fp32(b.d), m = fp16_to_fp32(b.m);
  for (int e = 0; e < QK; ++e) y[e] = d * float(q5_quant(b.qs, b.qh, e)) + m;
}

void dequantize_iq4_nl(const BlockIQ4_NL& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  for (int j = 0; j < 16; ++j) {
    y[j] = d * float(kIQ4NL[b.qs[j] & 0xF]);
    y[j + 16] = d * float(kIQ4NL[b.qs[j] >> 4]);
  }
}

void dequantize_q2_k(const BlockQ2_K& b, float* y) {
  const float d = fp16_to_fp32(b.d), dmin = fp16_to_fp32(b.dmin);
  for (int e = 0; e < QK_K; ++e) {
    const int n = e / 128, s = (e % 128) / 32, l = e % 32, i = e / 16;
    const int q = (b.qs[32 * n + l] >> (2 * s)) & 3;
    const float dl = d * float(b.scales[i] & 0xF), ml = dmin * float(b.scales[i] >> 4);
    y[e] = dl * float(q) - ml;
  }
}

void dequantize_q3_k(const BlockQ3_K& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  for (int e = 0; e < QK_K; ++e) {
    const int n = e / 128, s = (e % 128) / 32, l = e % 32, i = e / 16;
    const int low = (b.qs[32 * n + l] >> (2 * s)) & 3, high = (b.hmask[l] >> (4 * n + s)) & 1;
    const int sc = ((b.scales[i % 8] >> (4 * (i / 8))) & 0xF) | (((b.scales[8 + i % 4] >> (2 * (i / 4))) & 3) << 4);
    y[e] = (d * float(sc - 32)) * float(low - (high ? 0 : 4));
  }
}

// Sub-block j's 6-bit scale and min from Q4_K / Q5_K's 12 packed bytes.
inline void k_scale_min(const uint8_t* s, int j, int* sc, int* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Q4_K (qh == nullptr) and Q5_K.
void dequantize_q45_k(uint16_t d16, uint16_t dmin16, const uint8_t* scales, const uint8_t* qh, const uint8_t* qs,
                      float* y) {
  const float d = fp16_to_fp32(d16), dmin = fp16_to_fp32(dmin16);
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    k_scale_min(scales, j, &sc, &m);
    const float dl = d * float(sc), ml = dmin * float(m);
    for (int l = 0; l < 32; ++l) {
      const uint8_t byte = qs[32 * (j / 2) + l];
      int q = j % 2 ? byte >> 4 : byte & 0xF;
      if (qh) q |= ((qh[l] >> j) & 1) << 4;
      y[32 * j + l] = dl * float(q) - ml;
    }
  }
}

void dequantize_iq4_xs(const BlockIQ4_XS& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  for (int j = 0; j < 8; ++j) {
    const int ls = ((b.scales_l[j / 2] >> (4 * (j % 2))) & 0xF) | (((b.scales_h >> (2 * j)) & 3) << 4);
    const float dl = d * float(ls - 32);
    for (int l = 0; l < 16; ++l) {
      y[32 * j + l] = dl * float(kIQ4NL[b.qs[16 * j + l] & 0xF]);
      y[32 * j + 16 + l] = dl * float(kIQ4NL[b.qs[16 * j + l] >> 4]);
    }
  }
}


}  // namespace

bool known_wtype(int t) {
  switch (WType(t)) {
    case WType::F32: case WType::F16: case WType::BF16: case WType::Q4_0: case WType::Q4_1: case WType::Q5_0:
    case WType::Q5_1: case WType::Q8_0: case WType::IQ4_NL: case WType::Q2_K: case WType::Q3_K: case WType::Q4_K:
    case WType::Q5_K: case WType::Q6_K: case WType::IQ4_XS:
      return true;
  }
  return false;
}

int block_elems(WType t) {
  switch (t) {
    case WType::F32: case WType::F16: case WType::BF16: return 1;
    case WType::Q4_0: case WType::Q4_1: case WType::Q5_0: case WType::Q5_1: case WType::Q8_0: case WType::IQ4_NL:
      return QK;
    case WType::Q2_K: case WType::Q3_K: case WType::Q4_K: case WType::Q5_K: case WType::Q6_K: case WType::IQ4_XS:
      return QK_K;
  }
  throw std::invalid_argument("unknown weight type");
}

size_t gguf_row_bytes(WType type, int cols) { return size_t(cols) / block_elems(type) * gguf_block_bytes(type); }

size_t packed_bytes(WType type, int rows, int cols) {
  const size_t prow = size_t(padded_rows(rows));
  if (is_float_type(type)) return prow * gguf_row_bytes(type, cols);
  return prow / ROW_TILE * (size_t(cols) / block_elems(type)) * tile_bytes(type);
}

void pack_matrix(WType type, const uint8_t* src, int rows, int cols, uint8_t* dst) {
  const size_t row_bytes = gguf_row_bytes(type, cols);
  std::memset(dst, 0, packed_bytes(type, rows, cols));
  if (is_float_type(type)) {
    std::memcpy(dst, src, row_bytes * rows);
    return;
  }
  const int nb = cols / block_elems(type);
  const size_t bb = gguf_block_bytes(type), tb = tile_bytes(type);
  alignas(8) uint8_t block[sizeof(BlockQ6_K)];  // the largest block
  for (int row = 0; row < rows; ++row) {
    const int t = row / ROW_TILE, r = row % ROW_TILE;
    for (int kb = 0; kb < nb; ++kb) {
      std::memcpy(block, src + row * row_bytes + kb * bb, bb);
      move_block(type, block, r, dst + (size_t(t) * nb + kb) * tb, true);
    }
  }
}

void dequantize_gguf_row(WType type, const uint8_t* src, float* dst, int cols) {
  const int be = block_elems(type);
  const size_t bb = gguf_block_bytes(type);
  alignas(8) uint8_t raw[sizeof(BlockQ6_K)];  // each block copied out: GGUF blocks need no alignment
  for (int kb = 0; kb < cols / be; ++kb) {
    std::memcpy(raw, src + kb * bb, bb);
    float* y = dst + size_t(kb) * be;
    switch (type) {
      case WType::F32: std::memcpy(y, raw, 4); break;
      case WType::F16: { uint16_t h; std::memcpy(&h, raw, 2); *y = fp16_to_fp32(h); break; }
      case WType::BF16: { uint16_t h; std::memcpy(&h, raw, 2); *y = bf16_to_fp32(h); break; }
      case WType::Q4_0: {
        const auto& b = *reinterpret_cast<const BlockQ4_0*>(raw);
        const float d = fp16_to_fp32(b.d);
        for (int j = 0; j < 16; ++j) {
          y[j] = d * float((b.qs[j] & 0xF) - 8);
          y[j + 16] = d * float((b.qs[j] >> 4) - 8);
        }
        break;
      }
      case WType::Q4_1: {
        const auto& b = *reinterpret_cast<const BlockQ4_1*>(raw);
        const float d = fp16_to_fp32(b.d), m = fp16_to_fp32(b.m);
        for (int j = 0; j < 16; ++j) {
          y[j] = d * float(b.qs[j] & 0xF) + m;
          y[j + 16] = d * float(b.qs[j] >> 4) + m;
        }
        break;
      }
      case WType::Q8_0: {
        const auto& b = *reinterpret_cast<const BlockQ8_0*>(raw);
        const float d = fp16_to_fp32(b.d);
        for (int j = 0; j < QK; ++j) y[j] = d * float(b.qs[j]);
        break;
      }
      case WType::Q5_0: dequantize_q5_0(*reinterpret_cast<const BlockQ5_0*>(raw), y); break;
      case WType::Q5_1: dequantize_q5_1(*reinterpret_cast<const BlockQ5_1*>(raw), y); break;
      case WType::IQ4_NL: dequantize_iq4_nl(*reinterpret_cast<const BlockIQ4_NL*>(raw), y); break;
      case WType::Q2_K: dequantize_q2_k(*reinterpret_cast<const BlockQ2_K*>(raw), y); break;
      case WType::Q3_K: dequantize_q3_k(*reinterpret_cast<const BlockQ3_K*>(raw), y); break;
      case WType::Q4_K: {
        const auto& b = *reinterpret_cast<const BlockQ4_K*>(raw);
        dequantize_q45_k(b.d, b.dmin, b.scales, nullptr, b.qs, y);
        break;
      }
      case WType::Q5_K: {
        const auto& b = *reinterpret_cast<const BlockQ5_K*>(raw);
        dequantize_q45_k(b.d, b.dmin, b.scales, b.qh, b.qs, y);
        break;
      }
      case WType::Q6_K: dequantize_q6_k(*reinterpret_cast<const BlockQ6_K*>(raw), y); break;
      case WType::IQ4_XS: dequantize_iq4_xs(*reinterpret_cast<const BlockIQ4_XS*>(raw), y); break;
    }
  }
}

void dequantize_packed_row(WType type, const uint8_t* packed, int cols, int row, float* dst) {
  if (is_float_type(type)) {
    dequantize_gguf_row(type, packed + size_t(row) * gguf_row_bytes(type, cols), dst, cols);
    return;
  }
  // Rebuild the row's GGUF blocks from its tiles, one block at a time.
  const int nb = cols / block_elems(type), t = row / ROW_TILE, r = row % ROW_TILE, be = block_elems(type);
  const size_t tb = tile_bytes(type);
  alignas(8) uint8_t block[sizeof(BlockQ6_K)];
  for (int kb = 0; kb < nb; ++kb) {
    move_block(type, block, r, const_cast<uint8_t*>(packed) + (size_t(t) * nb + kb) * tb, false);
    dequantize_gguf_row(type, block, dst + size_t(kb) * be, be);
  }
}

}  // namespace sysinfer
