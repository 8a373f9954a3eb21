#include "attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace sysinfer {

namespace {

// Asks for the cache lines of [p, p + bytes) ahead of use (a hint; no effect on results).
inline void prefetch_bytes(const void* p, size_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (size_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, 0, 3);
}

}  // namespace

size_t attention_scratch_floats(const AttnShape& s, int max_tokens_per_item) {
  const size_t rows = size_t(max_tokens_per_item) * (s.n_head / s.n_head_kv);
  // per row: q, the chunk's scores / weights, the chunk's accumulator, max and sum, the merged acc,
  // max and sum (see run_attention_item)
  return rows * (3 * size_t(s.head_dim) + s.key_chunk + 4);
}

namespace {

// The one place chunks are merged, for every path: folds one chunk's state (acc[hd], max, sum) into a
// row's running state, in chunk order (noinline: one machine code for all callers, so no caller's
// contraction or vectorisation can differ). The first non-empty chunk is copied exactly, so a row
// with one chunk gets the plain softmax's bits.
__attribute__((noinline)) void merge_partial(float* run_acc, float* run_max, float* run_sum, const float* acc,
                                             float max, float sum, int hd) {
  if (sum == 0.f) return;  // the row sees no key of this chunk
  if (*run_sum == 0.f) {
    std::copy(acc, acc + hd, run_acc);
    *run_max = max;
    *run_sum = sum;
    return;
  }
  const float new_max = std::max(*run_max, max);
  const float w_run = std::exp(*run_max - new_max), w = std::exp(max - new_max);
  for (int i = 0; i < hd; ++i) run_acc[i] = run_acc[i] * w_run + acc[i] * w;
  *run_sum = *run_sum * w_run + sum * w;
  *run_max = new_max;
}

__attribute__((noinline)) void normalise(const float* acc, float sum, int hd, float* out) {
  const float inv = sum > 0.f ? 1.f / sum : 0.f;
  for (int i = 0; i < hd; ++i) out[i] = acc[i] * inv;
}

}  // namespace

// Chunk by chunk (attention.h): the kernel table's attn_scores scores every query row of the item
// (token t, head g of the GQA group: row t * group + g) against all the chunk's keys, read as fp16
// from their blocks; each row's softmax over the keys it sees (k.softmax: max, exponentials, sum);
// attn_accum sums the chunk's fp16 values by those weights. No per-block state and no f32 copy of
// K or V: each K/V byte is read from the cache once per item, into registers. At each chunk's end the
// chunk's state is either written out as a partial (split items) or merged into the row's running
// state.
void run_attention_item(const Kernels& k, const AttnShape& s, const AttnItem& item, const float* q,
                        int q_stride, const int32_t* positions, const int32_t* block_table,
                        const uint16_t* k_layer, const uint16_t* v_layer, float* scratch, float* out,
                        int out_stride, float* partial, int max_chunks) {
  const int hd = s.head_dim, bs = s.block_size, group = s.n_head / s.n_head_kv, kc = s.key_chunk;
  const int n_tok = item.tok_end - item.tok_begin, rows = n_tok * group;
  float* qs = scratch;                           // [rows][hd] query rows, pre-multiplied by scale
  float* p = qs + size_t(rows) * hd;             // [rows][kc] this chunk's scores, then softmax weights
  float* acc = p + size_t(rows) * kc;            // [rows][hd] this chunk's unnormalised outputs
  float* row_max = acc + size_t(rows) * hd;      // [rows] this chunk's max
  float* row_sum = row_max + rows;               // [rows] this chunk's sum (0: the row sees none of it)
  float* run_acc = row_sum + rows;               // [rows][hd] chunks merged so far
  float* run_max = run_acc + size_t(rows) * hd;  // [rows]
  float* run_sum = run_max + rows;               // [rows]

  for (int r = 0; r < rows; ++r) {
    const int t = r / group, h = item.kv_head * group + r % group;
    const float* src = q + size_t(item.tok_begin + t) * q_stride + size_t(h) * hd;
    for (int i = 0; i < hd; ++i) qs[size_t(r) * hd + i] = src[i] * s.scale;
    std::fill(run_acc + size_t(r) * hd, run_acc + size_t(r + 1) * hd, 0.f);
    run_max[r] = -std::numeric_limits<float>::infinity();
    run_sum[r] = 0.f;
  }
  // This KV head's blocks: block b at k_head + b * bs * hd.
  const size_t head_elems = size_t(s.n_blocks) * bs * hd;
  const uint16_t* k_head = k_layer + size_t(item.kv_head) * head_elems;
  const uint16_t* v_head = v_layer + size_t(item.kv_head) * head_elems;
  // Keys needed by the latest token of the item (tokens are in position order).
  const int key_end = std::min(item.key_end, positions[item.tok_end - 1] + 1);
  for (int c0 = item.key_begin, c1; c0 < key_end; c0 = c1) {  // c0: a multiple of kc, so of bs
    c1 = std::min(key_end, (c0 / kc + 1) * kc);
    const int nk = c1 - c0;
    const int32_t* blocks = block_table + c0 / bs;
    // The kernels prefetch ahead within the chunk; the first values of this chunk and the first keys
    // of the next one (blocks may lie anywhere) are asked for here, one phase before their use.
    prefetch_bytes(v_head + size_t(blocks[0]) * bs * hd, std::min(nk, bs) * size_t(hd) * sizeof(uint16_t));
    // Tokens before t_first see none of the chunk's keys.
    int t_first = 0;
    while (positions[item.tok_begin + t_first] < c0) ++t_first;  // the last token sees key c0
    const int r0 = t_first * group;
    std::fill(row_sum, row_sum + r0, 0.f);
    k.attn_scores(qs + size_t(r0) * hd, hd, rows - r0, k_head, blocks, bs, hd, nk, p + size_t(r0) * kc, kc);
    for (int r = r0; r < rows; ++r) {
      float* pr = p + size_t(r) * kc;
      const int pos = positions[item.tok_begin + r / group];
      const int n_visible = std::min(nk, pos + 1 - c0);  // causal: keys up to the row's own position
      const float slope = s.alibi_slopes ? s.alibi_slopes[item.kv_head * group + r % group] : 0.f;
      if (slope != 0.f)
        for (int j = 0; j < n_visible; ++j) pr[j] -= slope * float(pos - (c0 + j));
      row_sum[r] = k.softmax(pr, n_visible, &row_max[r]);
      std::fill(pr + n_visible, pr + nk, 0.f);
    }
    if (c1 < key_end) prefetch_bytes(k_head + size_t(blocks[nk / bs]) * bs * hd, size_t(bs) * hd * sizeof(uint16_t));
    k.attn_accum(p + size_t(r0) * kc, kc, rows - r0, v_head, blocks, bs, hd, nk, acc + size_t(r0) * hd, hd);
    for (int r = 0; r < rows; ++r) {
      const float* a = acc + size_t(r) * hd;
      if (item.split >= 0) {  // this chunk's state, for combine_attention_partials
        const int h = item.kv_head * group + r % group, chunk = c0 / kc;
        float* dst = partial + ((size_t(item.partial_row + r / group) * s.n_head + h) * max_chunks + chunk) * (hd + 2);
        std::copy(a, a + hd, dst);
        dst[hd] = row_max[r];
        dst[hd + 1] = row_sum[r];
      } else {
        merge_partial(run_acc + size_t(r) * hd, run_max + r, run_sum + r, a, row_max[r], row_sum[r], hd);
      }
    }
  }
  if (item.split >= 0) return;
  for (int r = 0; r < rows; ++r) {
    const int row = item.tok_begin + r / group, h = item.kv_head * group + r % group;
    normalise(run_acc + size_t(r) * hd, run_sum[r], hd, out + size_t(row) * out_stride + size_t(h) * hd);
  }
}

void combine_attention_partials(const float* partial, int n_chunks, int head_dim, float* out) {
  const int stride = head_dim + 2;
  float* acc = out;  // merged in place: out [head_dim] holds the running accumulator
  float max = -std::numeric_limits<float>::infinity(), sum = 0.f;
  std::fill(acc, acc + head_dim, 0.f);
  for (int c = 0; c < n_chunks; ++c) {
    const float* st = partial + size_t(c) * stride;
    merge_partial(acc, &max, &sum, st, st[head_dim], st[head_dim + 1], head_dim);
  }
  normalise(acc, sum, head_dim, out);
}

}  // namespace sysinfer
