// Fused attention over the paged KV cache: for one sequence, one KV head, a range of its new
// tokens and a range of key positions, score every query head of the GQA group and every query token
// against the keys chunk by chunk, reading each fp16 K/V block once, straight into the kernels'
// registers (Kernels::attn_scores / attn_accum: no conversion pass, no f32 copy of the cache).
//
// One summation order for every row, whatever the step: the keys of a row at position p are cut into
// fixed chunks [c * key_chunk, (c + 1) * key_chunk) clipped to p + 1; each chunk gets its own softmax
// (its max, weights and sum: Kernels::softmax), and the chunks are merged in order by merge_partial.
// Whether the chunks of a row are computed by one work item (prefill, verify rows) or by several in
// parallel (split-K for decode) and merged afterwards changes who computes them, never the
// arithmetic: a row's output is bit for bit the same alone, in a verify step of 1 + k rows, or in a
// batch (speculative decoding's greedy output depends on it; tests/native/test_row_independence.py
// holds it).
#pragma once

#include <cstdint>

#include "kernels.h"

namespace sysinfer {

struct AttnItem {
  int seq;          // sequence index in the batch
  int kv_head;
  int tok_begin;    // first new token (row in the batch) handled by this item
  int tok_end;      // one past the last
  int key_begin;    // key positions [key_begin, key_end), key_begin a multiple of key_chunk (split-K
  int key_end;      // for short sequences), clipped to each token's own position + 1
  int split;        // index of this key range, or -1 when the item covers all keys
  int partial_row;  // with split >= 0: the split-token row (of `partial`) of the item's first token
};

struct AttnShape {
  int n_head, n_head_kv, head_dim, block_size, n_blocks;
  float scale;                 // 1 / sqrt(head_dim)
  const float* alibi_slopes;   // [n_head], or nullptr for RoPE models
  int key_chunk;               // keys per softmax chunk (a multiple of block_size; see above)
};

// Sizes of the per-thread scratch that run_attention_item needs, in floats.
size_t attention_scratch_floats(const AttnShape& s, int max_tokens_per_item);

// q: [n_tok_batch][q_stride] (head h at column h * head_dim); positions: [n_tok_batch];
// block_table: this sequence's blocks; k_layer/v_layer: the layer's cache, fp16, V as
// [n_kv][n_blocks][block_size][hd] and K as [n_kv][n_blocks][hd][block_size] (see model.h). Writes
// either out[t][h * hd + i] (split < 0) or, for every chunk c of its key range and every token t of
// the item, partial[((partial_row + t) * n_head + h) * max_chunks + c][hd + 2] = (acc[hd], max, sum)
// (sum 0: the token sees no key of the chunk).
void run_attention_item(const Kernels& k, const AttnShape& s, const AttnItem& item, const float* q,
                        int q_stride, const int32_t* positions, const int32_t* block_table,
                        const uint16_t* k_layer, const uint16_t* v_layer, float* scratch, float* out,
                        int out_stride, float* partial, int max_chunks);

// Merges the n_chunks chunk results of one (token, head), in chunk order, into out[hd].
void combine_attention_partials(const float* partial, int n_chunks, int head_dim, float* out);

}  // namespace sysinfer
