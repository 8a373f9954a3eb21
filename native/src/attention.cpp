#include "attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SYSINFER_ATTENTION_CLONES __attribute__((target_clones("arch=haswell", "default")))
#else
#define SYSINFER_ATTENTION_CLONES
#endif

namespace sysinfer {

namespace {

// e^x for x <= 0 (softmax weights), vectorisable: 2^n * p(r) with x = n ln2 + r, |r| <= ln2 / 2,
// p a degree-6 Taylor polynomial (relative error < 2e-7); x below -87 gives 0.
inline float exp_nonpositive(float x) {
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

// Online-softmax state of one (query token, query head): acc[hd] then running max and sum.
struct SoftmaxState {
  float* acc;
  float* max;
  float* sum;
};
}  // namespace

size_t attention_scratch_floats(const AttnShape& s, int max_tokens_per_item) {
  const int group = s.n_head / s.n_head_kv;
  const size_t kv_block = 2 * size_t(s.block_size) * s.head_dim;          // K (transposed) and V as f32
  const size_t states = size_t(max_tokens_per_item) * group * (s.head_dim + 2);
  return kv_block + states + s.block_size;                                // + block scores
}

// Inline loops rather than a kernel-table call per key (a key is only 64-128 floats); on x86-64 an
// AVX2+FMA clone of this function is chosen at load time when the CPU has them.
SYSINFER_ATTENTION_CLONES
void run_attention_item(const Kernels& k, const AttnShape& s, const AttnItem& item, const float* q,
                        int q_stride, const int32_t* positions, const int32_t* block_table,
                        const uint16_t* k_layer, const uint16_t* v_layer, float* scratch, float* out,
                        int out_stride, float* partial, int max_splits) {
  const int hd = s.head_dim, bs = s.block_size, group = s.n_head / s.n_head_kv;
  const int n_tok = item.tok_end - item.tok_begin;
  float* kt = scratch;                        // [hd][bs] this block's keys (stored transposed) as f32
  float* vf = kt + size_t(bs) * hd;           // [bs][hd] values
  float* states = vf + size_t(bs) * hd;       // [n_tok][group][hd + 2]
  float* scores = states + size_t(n_tok) * group * (hd + 2);  // [bs]
  const float neg_inf = -std::numeric_limits<float>::infinity();

  for (int i = 0; i < n_tok * group; ++i) {
    float* st = states + size_t(i) * (hd + 2);
    std::fill(st, st + hd, 0.f);
    st[hd] = neg_inf;
    st[hd + 1] = 0.f;
  }
  // Keys needed by the latest token of the item (tokens are in position order).
  const int last_pos = positions[item.tok_end - 1];
  const int key_end = std::min(item.key_end, last_pos + 1);
  const size_t head_stride = size_t(bs) * hd;
  for (int block_start = item.key_begin / bs * bs; block_start < key_end; block_start += bs) {
    const int blk = block_table[block_start / bs];
    const size_t base = (size_t(blk) * s.n_head_kv + item.kv_head) * head_stride;
    const int j0 = std::max(item.key_begin - block_start, 0);
    const int j1 = std::min(key_end - block_start, bs);
    k.f16_to_f32(k_layer + base, kt, bs * hd);  // whole block: only slots j0..j1 are read
    k.f16_to_f32(v_layer + base + size_t(j0) * hd, vf + size_t(j0) * hd, (j1 - j0) * hd);
    for (int t = 0; t < n_tok; ++t) {
      const int row = item.tok_begin + t;
      const int pos = positions[row];
      const int jt = std::min(j1, pos + 1 - block_start);  // causal: keys at positions <= pos
      if (jt <= j0) continue;
      for (int g = 0; g < group; ++g) {
        const int h = item.kv_head * group + g;
        const float* qh = q + size_t(row) * q_stride + size_t(h) * hd;
        float* st = states + (size_t(t) * group + g) * (hd + 2);
        // scores[j] = q . k_j, one dimension at a time across the block's keys: vectorised without
        // reordering any sum, so a token's result never depends on how the batch was split.
        for (int j = j0; j < jt; ++j) scores[j] = 0.f;
        for (int i = 0; i < hd; ++i) {
          const float qi = qh[i];
          const float* row = kt + size_t(i) * bs;
#pragma omp simd
          for (int j = j0; j < jt; ++j) scores[j] += qi * row[j];
        }
        float block_max = neg_inf;
        for (int j = j0; j < jt; ++j) {
          float sc = scores[j] * s.scale;
          if (s.alibi_slopes) sc -= s.alibi_slopes[h] * float(pos - (block_start + j));
          scores[j] = sc;
          block_max = std::max(block_max, sc);
        }
        const float new_max = std::max(st[hd], block_max);
        const float rescale = std::exp(st[hd] - new_max);  // 0 on the first block
        if (rescale != 1.f)
          for (int i = 0; i < hd; ++i) st[i] *= rescale;
        float sum = st[hd + 1] * rescale;
#pragma omp simd
        for (int j = j0; j < jt; ++j) scores[j] = exp_nonpositive(scores[j] - new_max);
        for (int j = j0; j < jt; ++j) {
          const float p = scores[j];
          sum += p;
          const float* v = vf + size_t(j) * hd;
#pragma omp simd
          for (int i = 0; i < hd; ++i) st[i] += p * v[i];
        }
        st[hd] = new_max;
        st[hd + 1] = sum;
      }
    }
  }
  for (int t = 0; t < n_tok; ++t) {
    const int row = item.tok_begin + t;
    for (int g = 0; g < group; ++g) {
      const int h = item.kv_head * group + g;
      const float* st = states + (size_t(t) * group + g) * (hd + 2);
      if (item.split >= 0) {
        float* dst = partial + ((size_t(row) * s.n_head + h) * max_splits + item.split) * (hd + 2);
        std::copy(st, st + hd + 2, dst);
      } else {
        float* dst = out + size_t(row) * out_stride + size_t(h) * hd;
        const float inv = st[hd + 1] > 0.f ? 1.f / st[hd + 1] : 0.f;
        for (int i = 0; i < hd; ++i) dst[i] = st[i] * inv;
      }
    }
  }
}

void combine_attention_partials(const float* partial, int n_splits, int head_dim, float* out) {
  const int stride = head_dim + 2;
  float max = -std::numeric_limits<float>::infinity();
  for (int p = 0; p < n_splits; ++p) max = std::max(max, partial[p * stride + head_dim]);
  std::fill(out, out + head_dim, 0.f);
  float sum = 0.f;
  for (int p = 0; p < n_splits; ++p) {
    const float* st = partial + p * stride;
    if (st[head_dim + 1] == 0.f) continue;  // an empty key range
    const float w = std::exp(st[head_dim] - max);
    sum += w * st[head_dim + 1];
    for (int i = 0; i < head_dim; ++i) out[i] += w * st[i];
  }
  const float inv = sum > 0.f ? 1.f / sum : 0.f;
  for (int i = 0; i < head_dim; ++i) out[i] *= inv;
}

}  // namespace sysinfer
