// Fused attention over the paged KV cache: for one sequence, one KV head, a range of its new
// tokens and a range of key positions, read each K/V block once, score every query head of the
// GQA group and every query token against it, and keep an online softmax.
#pragma once

#include <cstdint>

#include "kernels.h"

namespace sysinfer {

struct AttnItem {
  int seq;          // sequence index in the batch
  int kv_head;
  int tok_begin;    // first new token (row in the batch) handled by this item
  int tok_end;      // one past the last
  int key_begin;    // key positions [key_begin, key_end) (split-K for long decodes), clipped to
  int key_end;      // each token's own position + 1
  int split;        // index of this key range, or -1 when the item covers all keys
  int partial_row;  // with split >= 0: which split token of the step this is (row of `partial`)
};

struct AttnShape {
  int n_head, n_head_kv, head_dim, block_size, n_blocks;
  float scale;                 // 1 / sqrt(head_dim)
  const float* alibi_slopes;   // [n_head], or nullptr for RoPE models
};

// Sizes of the per-thread scratch that run_attention_item needs, in floats.
size_t attention_scratch_floats(const AttnShape& s, int max_tokens_per_item);

// q: [n_tok_batch][q_stride] (head h at column h * head_dim); positions: [n_tok_batch];
// block_table: this sequence's blocks; k_layer/v_layer: the layer's cache, fp16, V as
// [n_kv][n_blocks][block_size][hd] and K as [n_kv][n_blocks][hd][block_size] (see model.h). Writes either out[t][h * hd + i] (split < 0) or
// partial[(partial_row * n_head + h) * max_splits + split][hd + 2] = (acc[hd], max, sum).
void run_attention_item(const Kernels& k, const AttnShape& s, const AttnItem& item, const float* q,
                        int q_stride, const int32_t* positions, const int32_t* block_table,
                        const uint16_t* k_layer, const uint16_t* v_layer, float* scratch, float* out,
                        int out_stride, float* partial, int max_splits);

// Merges the split-K partial results of one (token, head) into out[hd].
void combine_attention_partials(const float* partial, int n_splits, int head_dim, float* out);

}  // namespace sysinfer
