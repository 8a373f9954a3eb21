// Weight layouts: GGUF rows -> row-interleaved tiles (kernels.h), and back to float.
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

int block_elems(WType t) {
  switch (t) {
    case WType::F32: case WType::F16: return 1;
    case WType::Q4_0: case WType::Q4_1: case WType::Q8_0: return QK;
    case WType::Q6_K: return QK_K;
  }
  throw std::invalid_argument("unknown weight type");
}

size_t gguf_block_bytes(WType t) {
  switch (t) {
    case WType::F32: return 4;
    case WType::F16: return 2;
    case WType::Q4_0: return sizeof(BlockQ4_0);
    case WType::Q4_1: return sizeof(BlockQ4_1);
    case WType::Q8_0: return sizeof(BlockQ8_0);
    case WType::Q6_K: return sizeof(BlockQ6_K);
  }
  throw std::invalid_argument("unknown weight type");
}

size_t tile_bytes(WType t) {
  switch (t) {
    case WType::Q4_0: return sizeof(TileQ4_0);
    case WType::Q4_1: return sizeof(TileQ4_1);
    case WType::Q8_0: return sizeof(TileQ8_0);
    case WType::Q6_K: return sizeof(TileQ6_K);
    default: return 0;
  }
}

// One block of row r (0..7) copied into its tile.
void put_in_tile(WType t, const uint8_t* block, int r, uint8_t* tile) {
  switch (t) {
    case WType::Q4_0: {
      const auto* b = reinterpret_cast<const BlockQ4_0*>(block);
      auto* d = reinterpret_cast<TileQ4_0*>(tile);
      d->d[r] = b->d;
      for (int j = 0; j < 16; ++j) d->q[j / 4][r][j % 4] = b->qs[j];
      break;
    }
    case WType::Q4_1: {
      const auto* b = reinterpret_cast<const BlockQ4_1*>(block);
      auto* d = reinterpret_cast<TileQ4_1*>(tile);
      d->d[r] = b->d;
      d->m[r] = b->m;
      for (int j = 0; j < 16; ++j) d->q[j / 4][r][j % 4] = b->qs[j];
      break;
    }
    case WType::Q8_0: {
      const auto* b = reinterpret_cast<const BlockQ8_0*>(block);
      auto* d = reinterpret_cast<TileQ8_0*>(tile);
      d->d[r] = b->d;
      for (int j = 0; j < 32; ++j) d->q[j / 4][r][j % 4] = b->qs[j];
      break;
    }
    case WType::Q6_K:
      std::memcpy(&reinterpret_cast<TileQ6_K*>(tile)->b[r], block, sizeof(BlockQ6_K));
      break;
    default:
      break;
  }
}

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

}  // namespace

size_t gguf_row_bytes(WType type, int cols) { return size_t(cols) / block_elems(type) * gguf_block_bytes(type); }

size_t packed_bytes(WType type, int rows, int cols) {
  const size_t prow = size_t(padded_rows(rows));
  if (type == WType::F32 || type == WType::F16) return prow * gguf_row_bytes(type, cols);
  return prow / ROW_TILE * (size_t(cols) / block_elems(type)) * tile_bytes(type);
}

void pack_matrix(WType type, const uint8_t* src, int rows, int cols, uint8_t* dst) {
  const size_t row_bytes = gguf_row_bytes(type, cols);
  std::memset(dst, 0, packed_bytes(type, rows, cols));
  if (type == WType::F32 || type == WType::F16) {
    std::memcpy(dst, src, row_bytes * rows);
    return;
  }
  const int nb = cols / block_elems(type);
  const size_t bb = gguf_block_bytes(type), tb = tile_bytes(type);
  for (int row = 0; row < rows; ++row) {
    const int t = row / ROW_TILE, r = row % ROW_TILE;
    for (int kb = 0; kb < nb; ++kb)
      put_in_tile(type, src + row * row_bytes + kb * bb, r, dst + (size_t(t) * nb + kb) * tb);
  }
}

void dequantize_gguf_row(WType type, const uint8_t* src, float* dst, int cols) {
  switch (type) {
    case WType::F32:
      std::memcpy(dst, src, sizeof(float) * cols);
      return;
    case WType::F16:
      for (int i = 0; i < cols; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = fp16_to_fp32(h);
      }
      return;
    case WType::Q4_0:
      for (int kb = 0; kb < cols / QK; ++kb) {
        const auto* b = reinterpret_cast<const BlockQ4_0*>(src) + kb;
        const float d = fp16_to_fp32(b->d);
        for (int j = 0; j < 16; ++j) {
          dst[kb * QK + j] = d * float((b->qs[j] & 0xF) - 8);
          dst[kb * QK + j + 16] = d * float((b->qs[j] >> 4) - 8);
        }
      }
      return;
    case WType::Q4_1:
      for (int kb = 0; kb < cols / QK; ++kb) {
        const auto* b = reinterpret_cast<const BlockQ4_1*>(src) + kb;
        const float d = fp16_to_fp32(b->d), m = fp16_to_fp32(b->m);
        for (int j = 0; j < 16; ++j) {
          dst[kb * QK + j] = d * float(b->qs[j] & 0xF) + m;
          dst[kb * QK + j + 16] = d * float(b->qs[j] >> 4) + m;
        }
      }
      return;
    case WType::Q8_0:
      for (int kb = 0; kb < cols / QK; ++kb) {
        const auto* b = reinterpret_cast<const BlockQ8_0*>(src) + kb;
        const float d = fp16_to_fp32(b->d);
        for (int j = 0; j < QK; ++j) dst[kb * QK + j] = d * float(b->qs[j]);
      }
      return;
    case WType::Q6_K:
      for (int kb = 0; kb < cols / QK_K; ++kb)
        dequantize_q6_k(reinterpret_cast<const BlockQ6_K*>(src)[kb], dst + kb * QK_K);
      return;
  }
}

void dequantize_packed_row(WType type, const uint8_t* packed, int cols, int row, float* dst) {
  if (type == WType::F32 || type == WType::F16) {
    dequantize_gguf_row(type, packed + size_t(row) * gguf_row_bytes(type, cols), dst, cols);
    return;
  }
  // Rebuild the row's GGUF blocks from its tiles, one block at a time.
  const int nb = cols / block_elems(type), t = row / ROW_TILE, r = row % ROW_TILE, be = block_elems(type);
  const size_t tb = tile_bytes(type);
  for (int kb = 0; kb < nb; ++kb) {
    const uint8_t* tile = packed + (size_t(t) * nb + kb) * tb;
    alignas(8) uint8_t block[sizeof(BlockQ6_K)];
    switch (type) {
      case WType::Q4_0: {
        const auto* s = reinterpret_cast<const TileQ4_0*>(tile);
        BlockQ4_0 b;
        b.d = s->d[r];
        for (int j = 0; j < 16; ++j) b.qs[j] = s->q[j / 4][r][j % 4];
        std::memcpy(block, &b, sizeof(b));
        break;
      }
      case WType::Q4_1: {
        const auto* s = reinterpret_cast<const TileQ4_1*>(tile);
        BlockQ4_1 b;
        b.d = s->d[r];
        b.m = s->m[r];
        for (int j = 0; j < 16; ++j) b.qs[j] = s->q[j / 4][r][j % 4];
        std::memcpy(block, &b, sizeof(b));
        break;
      }
      case WType::Q8_0: {
        const auto* s = reinterpret_cast<const TileQ8_0*>(tile);
        BlockQ8_0 b;
        b.d = s->d[r];
        for (int j = 0; j < 32; ++j) b.qs[j] = s->q[j / 4][r][j % 4];
        std::memcpy(block, &b, sizeof(b));
        break;
      }
      default:
        std::memcpy(block, &reinterpret_cast<const TileQ6_K*>(tile)->b[r], sizeof(BlockQ6_K));
    }
    dequantize_gguf_row(type, block, dst + size_t(kb) * be, be);
  }
}

}  // namespace sysinfer
