// NEON kernel table, included twice: by kernels_neon.cpp (armv8-a: widening multiplies) and by
// kernels_neon_dotprod.cpp (armv8.2-a+dotprod: `sdot`, as on Kunpeng 920). Twin of
// kernels_generic.cpp.
//
// A 16-byte load of an interleaved tile group holds the same 4 bytes of 4 rows, so a 4-way dot
// product against the matching 4 activation bytes (duplicated to every lane) gives each lane its own
// row's partial sum: `sdot` does exactly that in one instruction.
//
// Before including, define SYSINFER_NEON_NS (the namespace) and SYSINFER_NEON_DOTPROD (0 or 1).
#include <arm_neon.h>

#include <cstring>

#include "kernels.h"

namespace sysinfer {
namespace SYSINFER_NEON_NS {

// acc[r] += sum_k w[4r + k] * a[4r + k] for the 4 rows r of a 16-byte group.
inline int32x4_t dot4(int32x4_t acc, int8x16_t w, int8x16_t a) {
#if SYSINFER_NEON_DOTPROD
  return vdotq_s32(acc, w, a);
#else
  const int16x8_t p0 = vmull_s8(vget_low_s8(w), vget_low_s8(a));
  const int16x8_t p1 = vmull_s8(vget_high_s8(w), vget_high_s8(a));
  return vaddq_s32(acc, vpaddq_s32(vpaddlq_s16(p0), vpaddlq_s16(p1)));
#endif
}

inline int8x16_t dup4(const int8_t* p) {  // 4 activation bytes to every 32-bit lane
  int32_t v;
  std::memcpy(&v, p, 4);
  return vreinterpretq_s8_s32(vdupq_n_s32(v));
}

inline float32x4_t fp16x4(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }

void quantize_act(const float* x, ActBlock* out, int n) {
  for (int b = 0; b < n / QK; ++b) {
    float32x4_t v[8];
    float32x4_t amax = vdupq_n_f32(0.f);
    for (int i = 0; i < 8; ++i) {
      v[i] = vld1q_f32(x + b * QK + 4 * i);
      amax = vmaxq_f32(amax, vabsq_f32(v[i]));
    }
    const float d = vmaxvq_f32(amax) / 127.f;
    const float32x4_t inv = vdupq_n_f32(d > 0.f ? 1.f / d : 0.f);
    ActBlock& o = out[b];
    o.d = d;
    int32x4_t q[8];
    for (int i = 0; i < 8; ++i) {  // trunc(s + copysign(0.5, s)), as the generic table
      const float32x4_t s = vmulq_f32(v[i], inv);
      const float32x4_t half = vbslq_f32(vcltq_f32(s, vdupq_n_f32(0.f)), vdupq_n_f32(-0.5f), vdupq_n_f32(0.5f));
      q[i] = vcvtq_s32_f32(vaddq_f32(s, half));
    }
    o.sum[0] = int16_t(vaddvq_s32(vaddq_s32(vaddq_s32(q[0], q[1]), vaddq_s32(q[2], q[3]))));
    o.sum[1] = int16_t(vaddvq_s32(vaddq_s32(vaddq_s32(q[4], q[5]), vaddq_s32(q[6], q[7]))));
    for (int i = 0; i < 8; i += 2) {
      const int16x8_t h = vcombine_s16(vqmovn_s32(q[i]), vqmovn_s32(q[i + 1]));
      vst1_s8(o.qs + 4 * i, vqmovn_s16(h));
    }
  }
}

// Per-row dots (rows 0-3 in lo_acc, 4-7 in hi_acc) of one Q4 tile block; nibbles unsigned.
inline void q4_tile_dot(const uint8_t (*q)[8][4], const ActBlock& a, int32x4_t* r03, int32x4_t* r47) {
  const uint8x16_t m4 = vdupq_n_u8(0x0F);
  int32x4_t s0 = vdupq_n_s32(0), s1 = vdupq_n_s32(0);
  for (int g = 0; g < 4; ++g) {
    const uint8x16_t v0 = vld1q_u8(q[g][0]), v1 = vld1q_u8(q[g][4]);
    const int8x16_t alo = dup4(a.qs + 4 * g), ahi = dup4(a.qs + 16 + 4 * g);
    s0 = dot4(s0, vreinterpretq_s8_u8(vandq_u8(v0, m4)), alo);
    s0 = dot4(s0, vreinterpretq_s8_u8(vshrq_n_u8(v0, 4)), ahi);
    s1 = dot4(s1, vreinterpretq_s8_u8(vandq_u8(v1, m4)), alo);
    s1 = dot4(s1, vreinterpretq_s8_u8(vshrq_n_u8(v1, 4)), ahi);
  }
  *r03 = s0;
  *r47 = s1;
}

void q4_0_tile(const TileQ4_0* tiles, int nb, const ActBlock* x, float* y) {
  float32x4_t acc0 = vdupq_n_f32(0.f), acc1 = vdupq_n_f32(0.f);
  for (int kb = 0; kb < nb; ++kb) {
    const ActBlock& a = x[kb];
    int32x4_t s0, s1;
    q4_tile_dot(tiles[kb].q, a, &s0, &s1);
    const int32x4_t off = vdupq_n_s32(8 * (a.sum[0] + a.sum[1]));
    acc0 = vfmaq_f32(acc0, vcvtq_f32_s32(vsubq_s32(s0, off)), vmulq_n_f32(fp16x4(tiles[kb].d), a.d));
    acc1 = vfmaq_f32(acc1, vcvtq_f32_s32(vsubq_s32(s1, off)), vmulq_n_f32(fp16x4(tiles[kb].d + 4), a.d));
  }
  vst1q_f32(y, acc0);
  vst1q_f32(y + 4, acc1);
}

void q4_1_tile(const TileQ4_1* tiles, int nb, const ActBlock* x, float* y) {
  float32x4_t acc0 = vdupq_n_f32(0.f), acc1 = vdupq_n_f32(0.f);
  for (int kb = 0; kb < nb; ++kb) {
    const ActBlock& a = x[kb];
    int32x4_t s0, s1;
    q4_tile_dot(tiles[kb].q, a, &s0, &s1);
    const float sum = a.d * float(a.sum[0] + a.sum[1]);
    acc0 = vfmaq_f32(acc0, vcvtq_f32_s32(s0), vmulq_n_f32(fp16x4(tiles[kb].d), a.d));
    acc1 = vfmaq_f32(acc1, vcvtq_f32_s32(s1), vmulq_n_f32(fp16x4(tiles[kb].d + 4), a.d));
    acc0 = vfmaq_n_f32(acc0, fp16x4(tiles[kb].m), sum);
    acc1 = vfmaq_n_f32(acc1, fp16x4(tiles[kb].m + 4), sum);
  }
  vst1q_f32(y, acc0);
  vst1q_f32(y + 4, acc1);
}

void q8_0_tile(const TileQ8_0* tiles, int nb, const ActBlock* x, float* y) {
  float32x4_t acc0 = vdupq_n_f32(0.f), acc1 = vdupq_n_f32(0.f);
  for (int kb = 0; kb < nb; ++kb) {
    const ActBlock& a = x[kb];
    int32x4_t s0 = vdupq_n_s32(0), s1 = vdupq_n_s32(0);
    for (int g = 0; g < 8; ++g) {
      const int8x16_t av = dup4(a.qs + 4 * g);
      s0 = dot4(s0, vld1q_s8(tiles[kb].q[g][0]), av);
      s1 = dot4(s1, vld1q_s8(tiles[kb].q[g][4]), av);
    }
    acc0 = vfmaq_f32(acc0, vcvtq_f32_s32(s0), vmulq_n_f32(fp16x4(tiles[kb].d), a.d));
    acc1 = vfmaq_f32(acc1, vcvtq_f32_s32(s1), vmulq_n_f32(fp16x4(tiles[kb].d + 4), a.d));
  }
  vst1q_f32(y, acc0);
  vst1q_f32(y + 4, acc1);
}

// sum over 16 bytes of w[i] * a[i] (w unsigned 0..63 as int8, a signed).
inline int dot16(int8x16_t w, int8x16_t a) {
#if SYSINFER_NEON_DOTPROD
  return vaddvq_s32(vdotq_s32(vdupq_n_s32(0), w, a));
#else
  const int16x8_t p = vmlal_s8(vmull_s8(vget_low_s8(w), vget_low_s8(a)), vget_high_s8(w), vget_high_s8(a));
  return vaddlvq_s16(p);
#endif
}

float q6_k_row(const TileQ6_K* tiles, int r, int nsb, const ActBlock* x) {
  const uint8x16_t m4 = vdupq_n_u8(0x0F), m2 = vdupq_n_u8(0x03);
  float acc = 0.f;
  for (int sb = 0; sb < nsb; ++sb) {
    const BlockQ6_K& b = tiles[sb].b[r];
    const float d = fp16_to_fp32(b.d);
    for (int half = 0; half < 2; ++half) {
      for (int h16 = 0; h16 < 2; ++h16) {  // weights l = 16*h16 .. 16*h16+15 of each 32-group
        const uint8x16_t ql0 = vld1q_u8(b.ql + 64 * half + 16 * h16);
        const uint8x16_t ql1 = vld1q_u8(b.ql + 64 * half + 32 + 16 * h16);
        const uint8x16_t qh = vld1q_u8(b.qh + 32 * half + 16 * h16);
        const uint8x16_t q[4] = {
            vorrq_u8(vandq_u8(ql0, m4), vshlq_n_u8(vandq_u8(qh, m2), 4)),
            vorrq_u8(vandq_u8(ql1, m4), vshlq_n_u8(vandq_u8(vshrq_n_u8(qh, 2), m2), 4)),
            vorrq_u8(vshrq_n_u8(ql0, 4), vshlq_n_u8(vandq_u8(vshrq_n_u8(qh, 4), m2), 4)),
            vorrq_u8(vshrq_n_u8(ql1, 4), vshlq_n_u8(vshrq_n_u8(qh, 6), 4)),
        };
        for (int p = 0; p < 4; ++p) {
          const ActBlock& a = x[sb * 8 + half * 4 + p];
          const int sc = b.scales[8 * half + 2 * p + h16];
          const int dot = dot16(vreinterpretq_s8_u8(q[p]), vld1q_s8(a.qs + 16 * h16));
          acc += d * a.d * float(sc * (dot - 32 * a.sum[h16]));
        }
      }
    }
  }
  return acc;
}

float dot_f32(const float* a, const float* b, int n) {
  float32x4_t s0 = vdupq_n_f32(0.f), s1 = vdupq_n_f32(0.f);
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
    s1 = vfmaq_f32(s1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
  }
  for (; i + 4 <= n; i += 4) s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
  float s = vaddvq_f32(vaddq_f32(s0, s1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

float dot_f16_f32(const uint16_t* a, const float* b, int n) {
  float32x4_t s = vdupq_n_f32(0.f);
  int i = 0;
  for (; i + 4 <= n; i += 4) s = vfmaq_f32(s, fp16x4(a + i), vld1q_f32(b + i));
  float t = vaddvq_f32(s);
  for (; i < n; ++i) t += fp16_to_fp32(a[i]) * b[i];
  return t;
}

void axpy_f32(float a, const float* x, float* y, int n) {
  int i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vld1q_f32(x + i), a));
  for (; i < n; ++i) y[i] += a * x[i];
}

void f16_to_f32(const uint16_t* src, float* dst, int n) {
  int i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(dst + i, fp16x4(src + i));
  for (; i < n; ++i) dst[i] = fp16_to_fp32(src[i]);
}

void f32_to_f16(const float* src, uint16_t* dst, int n) {
  int i = 0;  // FCVTN rounds to nearest even (the default FPCR mode)
  for (; i + 4 <= n; i += 4) vst1_u16(dst + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(src + i))));
  for (; i < n; ++i) dst[i] = fp32_to_fp16(src[i]);
}

void gemm(WType type, const void* w, int cols, int tile0, int tile1, const void* x, int n_tok, float* y, int ldy) {
  const int nb = cols / QK;
  for (int t = tile0; t < tile1; ++t) {
    for (int tok = 0; tok < n_tok; ++tok) {
      const ActBlock* xa = static_cast<const ActBlock*>(x) + size_t(tok) * nb;
      const float* xf = static_cast<const float*>(x) + size_t(tok) * cols;
      float* yt = y + size_t(tok) * ldy + size_t(t) * ROW_TILE;
      switch (type) {
        case WType::Q4_0: q4_0_tile(static_cast<const TileQ4_0*>(w) + size_t(t) * nb, nb, xa, yt); break;
        case WType::Q4_1: q4_1_tile(static_cast<const TileQ4_1*>(w) + size_t(t) * nb, nb, xa, yt); break;
        case WType::Q8_0: q8_0_tile(static_cast<const TileQ8_0*>(w) + size_t(t) * nb, nb, xa, yt); break;
        case WType::Q6_K:
          for (int r = 0; r < ROW_TILE; ++r)
            yt[r] = q6_k_row(static_cast<const TileQ6_K*>(w) + size_t(t) * (cols / QK_K), r, cols / QK_K, xa);
          break;
        case WType::F32:
          for (int r = 0; r < ROW_TILE; ++r)
            yt[r] = dot_f32(static_cast<const float*>(w) + (size_t(t) * ROW_TILE + r) * cols, xf, cols);
          break;
        case WType::F16:
          for (int r = 0; r < ROW_TILE; ++r)
            yt[r] = dot_f16_f32(static_cast<const uint16_t*>(w) + (size_t(t) * ROW_TILE + r) * cols, xf, cols);
          break;
      }
    }
  }
}

}  // namespace SYSINFER_NEON_NS
}  // namespace sysinfer
