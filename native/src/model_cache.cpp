// The paged KV arena of every node (its own KV heads; block id b names the same token slots in every
// node's arena) and the step scratch, allocated once; and the store of a step's keys and values.
#include <algorithm>

#include "attention.h"
#include "model.h"
#include "model_internal.h"

namespace sysinfer {

void Model::init_cache(int n_blocks, int block_size, int max_step_tokens, int max_out_rows) {
  if (n_blocks <= 0 || block_size <= 0 || max_step_tokens <= 0 || max_out_rows <= 0)
    bad_input("init_cache: sizes must be positive");
  if (max_out_rows > max_step_tokens) bad_input("init_cache: max_out_rows must not exceed max_step_tokens");
  const int D = cfg_.n_embd, hd = cfg_.head_dim, T = max_step_tokens;
  n_blocks_ = n_blocks;
  block_size_ = block_size;
  max_step_tokens_ = T;
  max_out_rows_ = max_out_rows;
  kv_bytes_ = 0;
  // Softmax chunk: a whole number of blocks, at least kMinKeysPerChunk keys, at most kMaxKeyChunks of
  // them in the longest context.
  const int min_chunk = std::max(kMinKeysPerChunk, (cfg_.n_ctx + kMaxKeyChunks - 1) / kMaxKeyChunks);
  key_chunk_ = (min_chunk + block_size - 1) / block_size * block_size;
  const int max_chunks = (cfg_.n_ctx + key_chunk_ - 1) / key_chunk_;
  for (Node& n : nodes_) {
    const int mem = n.spec.mem_node;
    BindStatus st = BindStatus::kNotAsked;
    auto note = [&] { n.bind = std::max(n.bind, st); };
    const size_t kv_elems = size_t(cfg_.n_layer) * n_blocks * n.nkv * block_size * hd;
    n.k_cache = node_array<uint16_t>(kv_elems, mem, &st); note();
    n.v_cache = node_array<uint16_t>(kv_elems, mem, &st); note();
    n.kv_bytes = 2 * kv_elems * sizeof(uint16_t);
    kv_bytes_ += n.kv_bytes;
    int qkv_w = 0, gu_w = 0;
    for (const NodeLayer& L : n.layers) {
      qkv_w = std::max(qkv_w, L.qkv.width);
      gu_w = std::max(gu_w, L.gate_up.width);
      for (const MatrixGroup& g : L.exp_gate_up) gu_w = std::max(gu_w, g.width);
    }
    // FFN rows of a step: T tokens, or T * n_expert_used expert rows (MoE).
    const int R = cfg_.ffn == FfnKind::MoE ? T * cfg_.n_expert_used : T;
    const int A = n.nh * hd;
    n.qkv = node_array<float>(size_t(T) * std::max(qkv_w, 1), mem, &st); note();
    n.attn = node_array<float>(size_t(T) * std::max(A, 1), mem, &st); note();
    // MoE across nodes: down's input is the whole FFN width (moe_ffn_nodes)
    const int ff_in = cfg_.ffn == FfnKind::MoE && nodes_.size() > 1 ? cfg_.n_ff : n.nf;
    n.xq = node_array<ActBlock>(std::max(size_t(T) * std::max(A, QK), size_t(R) * std::max(ff_in, QK)) / QK, mem, &st);
    note();
    n.gate_up = node_array<float>(size_t(R) * std::max(gu_w, 1), mem, &st); note();
    n.act = node_array<float>(size_t(R) * std::max(n.nf, 1), mem, &st); note();
    if (cfg_.ffn == FfnKind::MoE) {
      n.moe_out = node_array<float>(size_t(R) * D, mem, &st);
      note();
    }
    n.part = node_array<float>(size_t(T) * D, mem, &st); note();
    n.max_chunks = max_chunks;
    n.attn_next.reset(new std::atomic<int>[cfg_.n_layer]);
    n.matmul_next.reset(new std::atomic<int>[kGroups * cfg_.n_layer + 1]);
    n.attn_partial.assign(size_t(kMaxSplitTokens) * std::max(n.nh, 1) * n.max_chunks * (hd + 2), 0.f);
    if (n.nkv > 0) {
      AttnShape shape{n.nh, n.nkv, hd, block_size, n_blocks, 0.f, nullptr, key_chunk_};
      n.attn_scratch_per_thread = (attention_scratch_floats(shape, kAttnTokensPerItem) + 15) / 16 * 16;
    }
    n.attn_scratch.assign(n.attn_scratch_per_thread * n.n_threads, 0.f);
    // Worst case: every token its own sequence with every split, or prefill chunks of every head.
    n.attn_items.reserve(size_t(n.nkv) * (T + kMaxSplitTokens * n.max_chunks));
    n.split_tokens.reserve(kMaxSplitTokens);
  }
  x_.assign(size_t(T) * D, 0.f);
  xn_.assign(size_t(T) * D, 0.f);
  xq_.assign(size_t(T) * D / QK, ActBlock{});
  out_rows_.assign(size_t(max_out_rows) * D, 0.f);
  rope_cs_.assign(size_t(T) * std::max(cfg_.rope_dim, 1), 0.f);
  logits_pad_.assign(size_t(max_out_rows) * padded_rows(cfg_.n_vocab), 0.f);
  if (cfg_.ffn == FfnKind::MoE) init_moe_scratch(T);
  cache_ready_ = true;
}

// Token row's k and v of node n's KV heads into block `block`, slot `slot` of its arena, as fp16.
void Model::store_kv(Node& n, int layer, const NodeLayer& L, const float* row, int block, int slot) {
  const int hd = cfg_.head_dim, nkv = n.nkv;
  uint16_t* kc = n.k_cache.get() + size_t(layer) * n_blocks_ * nkv * block_size_ * hd;
  uint16_t* vc = n.v_cache.get() + size_t(layer) * n_blocks_ * nkv * block_size_ * hd;
  for (int h = 0; h < nkv; ++h) {
    const size_t head_base = (size_t(h) * n_blocks_ + block) * block_size_ * hd;
    kernels_->f32_to_f16(row + L.v_off + h * hd, vc + head_base + size_t(slot) * hd, hd);
    // Keys are stored transposed ([hd][bs]): converted 64 at a time by the table's vector
    // conversion (the same round-to-nearest-even as fp32_to_fp16), then scattered to their rows.
    const float* key = row + L.k_off + h * hd;
    uint16_t k16[64];
    for (int i0 = 0; i0 < hd; i0 += 64) {
      const int n16 = std::min(64, hd - i0);
      kernels_->f32_to_f16(key + i0, k16, n16);
      for (int i = 0; i < n16; ++i) kc[head_base + size_t(i0 + i) * block_size_ + slot] = k16[i];
    }
  }
}

}  // namespace sysinfer
