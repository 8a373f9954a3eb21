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
  const size_t kv_block = 2 * size_t(s.block_size) * s.head_dim;   // K (transposed) and V as f32
  // per row: q, the chunk's accumulator, scores, the chunk's max and sum, the merged acc, max, sum
  return kv_block + rows * (4 * size_t(s.head_dim) + 4 + s.block_size);
}

namespace {

// Folds one block's scores (p[0, nk), keys [key0, key0 + nk)) into a row's online softmax: only
// the first n_visible keys count (causal); p becomes the weights (0 for hidden keys), acc [hd] is
// rescaled when the running max grows.
inline void softmax_block(const Kernels& k, float* p, int nk, int n_visible, float alibi_slope, int pos, int key0,
                          int hd, float* acc, float* max, float* sum) {
  if (alibi_slope != 0.f)
    for (int j = 0; j < n_visible; ++j) p[j] -= alibi_slope * float(pos - (key0 + j));
  float block_max = -std::numeric_limits<float>::infinity();
  for (int j = 0; j < n_visible; ++j) block_max = std::max(block_max, p[j]);
  const float new_max = std::max(*max, block_max);
  const float rescale = std::exp(*max - new_max);  // 0 on the first block (max = -inf)
  if (rescale != 1.f)
    for (int i = 0; i < hd; ++i) acc[i] *= rescale;
  k.softmax_exp(p, n_visible, new_max);
  float s = *sum * rescale;
  for (int j = 0; j < n_visible; ++j) s += p[j];  // in key order, as a single-token decode does
  for (int j = n_visible; j < nk; ++j) p[j] = 0.f;
  *max = new_max;
  *sum = s;
}

// Folds one chunk's online-softmax state (acc[hd], max, sum) into a row's running state (in chunk
// order). The one place chunks are merged, for every path (noinline: one machine code for all
// callers, so no caller's contraction or vectorisation can differ). The first non-empty chunk is
// copied exactly, so a row with one chunk gets the plain online softmax's bits.
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

// Every query row of the item (token t, head g of the GQA group: row t * group + g) is scored
// against one K block at a time by the kernel table's tiled attn_scores, folded into its chunk's
// online softmax (its exponentials by the table's softmax_exp), and the block's values accumulated by
// attn_accum: each K/V block is converted once and serves all rows. At each chunk's end the chunk's
// state is either written out as a partial (split items) or merged into the row's running state.
void run_attention_item(const Kernels& k, const AttnShape& s, const AttnItem& item, const float* q,
                        int q_stride, const int32_t* positions, const int32_t* block_table,
                        const uint16_t* k_layer, const uint16_t* v_layer, float* scratch, float* out,
                        int out_stride, float* partial, int max_chunks) {
  const int hd = s.head_dim, bs = s.block_size, group = s.n_head / s.n_head_kv;
  const int n_tok = item.tok_end - item.tok_begin, rows = n_tok * group;
  float* kt = scratch;                        // [hd][bs] this block's keys (stored transposed) as f32
  float* vf = kt + size_t(bs) * hd;           // [bs][hd] values
  float* qs = vf + size_t(bs) * hd;           // [rows][hd] query rows, pre-multiplied by scale
  float* acc = qs + size_t(rows) * hd;        // [rows][hd] this chunk's unnormalised outputs
  float* p = acc + size_t(rows) * hd;         // [rows][bs] scores, then softmax weights
  float* row_max = p + size_t(rows) * bs;     // [rows] this chunk's running max
  float* row_sum = row_max + rows;            // [rows] this chunk's running sum
  float* run_acc = row_sum + rows;            // [rows][hd] chunks merged so far
  float* run_max = run_acc + size_t(rows) * hd;  // [rows]
  float* run_sum = run_max + rows;            // [rows]

  for (int r = 0; r < rows; ++r) {
    const int t = r / group, h = item.kv_head * group + r % group;
    const float* src = q + size_t(item.tok_begin + t) * q_stride + size_t(h) * hd;
    for (int i = 0; i < hd; ++i) qs[size_t(r) * hd + i] = src[i] * s.scale;
    std::fill(run_acc + size_t(r) * hd, run_acc + size_t(r + 1) * hd, 0.f);
    run_max[r] = -std::numeric_limits<float>::infinity();
    run_sum[r] = 0.f;
  }
  // Keys needed by the latest token of the item (tokens are in position order).
  const int key_end = std::min(item.key_end, positions[item.tok_end - 1] + 1);
  const size_t head_stride = size_t(bs) * hd;
  for (int c0 = item.key_begin, c1; c0 < key_end; c0 = c1) {
    c1 = std::min(key_end, (c0 / s.key_chunk + 1) * s.key_chunk);
    std::fill(acc, acc + size_t(rows) * hd, 0.f);
    std::fill(row_max, row_max + rows, -std::numeric_limits<float>::infinity());
    std::fill(row_sum, row_sum + rows, 0.f);
    for (int block_start = c0 / bs * bs; block_start < c1; block_start += bs) {
      const int j0 = std::max(c0 - block_start, 0);
      const int j1 = std::min(c1 - block_start, bs);
      // Tokens before t_first see none of keys [block_start + j0, block_start + j1).
      int t_first = 0;
      while (t_first < n_tok && positions[item.tok_begin + t_first] < block_start + j0) ++t_first;
      if (t_first == n_tok) continue;
      const int r0 = t_first * group, nk = j1 - j0;
      const size_t base = (size_t(item.kv_head) * s.n_blocks + block_table[block_start / bs]) * head_stride;
      if (block_start + bs < key_end) {  // blocks may be scattered: start the next one's loads now
        const size_t next = (size_t(item.kv_head) * s.n_blocks + block_table[block_start / bs + 1]) * head_stride;
        prefetch_bytes(k_layer + next, head_stride * sizeof(uint16_t));
        prefetch_bytes(v_layer + next, head_stride * sizeof(uint16_t));
      }
      k.f16_to_f32(k_layer + base, kt, bs * hd);  // whole block: only slots j0..j1 are read
      k.f16_to_f32(v_layer + base + size_t(j0) * hd, vf + size_t(j0) * hd, nk * hd);
      k.attn_scores(qs + size_t(r0) * hd, hd, rows - r0, kt + j0, bs, hd, nk, p + size_t(r0) * bs, bs);
      for (int r = r0; r < rows; ++r) {
        const int pos = positions[item.tok_begin + r / group];
        const float slope = s.alibi_slopes ? s.alibi_slopes[item.kv_head * group + r % group] : 0.f;
        softmax_block(k, p + size_t(r) * bs, nk, std::min(nk, pos + 1 - block_start - j0), slope, pos,
                      block_start + j0, hd, acc + size_t(r) * hd, row_max + r, row_sum + r);
      }
      k.attn_accum(p + size_t(r0) * bs, bs, rows - r0, vf + size_t(j0) * hd, hd, nk, acc + size_t(r0) * hd, hd);
    }
    for (int r = 0; r < rows; ++r) {
      const float* a = acc + size_t(r) * hd;
      if (item.split >= 0) {  // this chunk's state, for combine_attention_partials
        const int h = item.kv_head * group + r % group, chunk = c0 / s.key_chunk;
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
