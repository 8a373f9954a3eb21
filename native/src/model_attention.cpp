// Attention: the per-step plan of work items (split-K for short sequences), q/k made ready
// (biases, per-head norms, RoPE), and the fused paged attention of each node's heads (attention.h).
#include <algorithm>
#include <cmath>
#include <tuple>

#include "attention.h"
#include "model.h"
#include "model_internal.h"

namespace sysinfer {

void Model::plan_attention(Node& n, const StepBatch& b) {
  n.attn_items.clear();
  n.split_tokens.clear();
  for (int l = 0; l < cfg_.n_layer; ++l) n.attn_next[l].store(0, std::memory_order_relaxed);
  if (n.nkv == 0) return;
  // Short sequences (decode, verify) give few items (one per KV head): split their keys, at chunk
  // boundaries, so that every thread of the node gets several items. Which sequences split and into
  // how many items only decides who computes which chunk: results are the same (attention.h).
  auto splittable = [&](int s, int* budget) {
    const int len = b.seq_starts[s + 1] - b.seq_starts[s];
    if (len > *budget) return false;
    *budget -= len;
    return true;
  };
  int n_short = 0, budget = kMaxSplitTokens;
  for (int s = 0; s < b.n_seq; ++s) n_short += splittable(s, &budget);
  const int wanted = n_short == 0 ? 1 : (kAttnItemsPerThread * n.n_threads + n.nkv * n_short - 1) / (n.nkv * n_short);
  budget = kMaxSplitTokens;
  for (int s = 0; s < b.n_seq; ++s) {
    const int t0 = b.seq_starts[s], t1 = b.seq_starts[s + 1], ctx = b.context_lens[s];
    const int n_chunks = (ctx + key_chunk_ - 1) / key_chunk_;
    const int splits = splittable(s, &budget) ? std::min(n_chunks, wanted) : 1;
    if (splits > 1) {
      const int partial_row = int(n.split_tokens.size());
      for (int t = t0; t < t1; ++t) n.split_tokens.push_back({t, n_chunks});
      for (int h = 0; h < n.nkv; ++h)  // the node's own KV heads, numbered from 0
        for (int p = 0; p < splits; ++p) {
          const int c0 = n_chunks * p / splits, c1 = n_chunks * (p + 1) / splits;
          n.attn_items.push_back({s, h, t0, t1, c0 * key_chunk_, std::min(ctx, c1 * key_chunk_), p, partial_row});
        }
      continue;
    }
    for (int h = 0; h < n.nkv; ++h)
      for (int c = t0; c < t1; c += kAttnTokensPerItem)
        n.attn_items.push_back({s, h, c, std::min(t1, c + kAttnTokensPerItem), 0, ctx, -1, -1});
  }
  // Threads take items dynamically, the costliest (most keys) first, so the last ones are short.
  // (std::sort: no allocation inside a step; the order never changes a result, only who does what.)
  auto cost = [&](const AttnItem& it) {
    const int keys = std::min(it.key_end, b.positions[it.tok_end - 1] + 1) - it.key_begin;
    return int64_t(it.tok_end - it.tok_begin) * keys;
  };
  std::sort(n.attn_items.begin(), n.attn_items.end(), [&](const AttnItem& x, const AttnItem& y) {
    const int64_t cx = cost(x), cy = cost(y);
    return cx != cy ? cx > cy : std::tie(x.seq, x.kv_head, x.tok_begin, x.split) < std::tie(y.seq, y.kv_head, y.tok_begin, y.split);
  });
}

// This step's q and k of node n's heads made ready for attention (biases, per-head norms, RoPE:
// whichever the description has), then k and v into the node's paged cache. The node's threads
// split the tokens.
void Model::rope_and_store_kv(Node& n, int rank, int layer, const StepBatch& b) {
  const NodeLayer& L = n.layers[layer];
  const Layer& shared = layers_[layer];
  const bool extras = !shared.q_bias.empty() || !shared.q_norm.empty() || !shared.k_bias.empty() ||
                      !shared.v_bias.empty() || !shared.k_norm.empty();
  const int W = L.qkv.width;
  int t0, t1;
  split_range(b.n_tok, rank, n.n_threads, &t0, &t1);
  int s = 0;
  for (int t = t0; t < t1; ++t) {
    while (b.seq_starts[s + 1] <= t) ++s;
    float* row = n.qkv.get() + size_t(t) * W;
    if (extras) bias_and_qk_norm(n, shared, L, row);
    if (cfg_.positions == Positions::Rope) rope_row(n, L, rope_cs_.data() + size_t(t) * cfg_.rope_dim, row);
    const int pos = b.positions[t];
    store_kv(n, layer, L, row, b.block_tables[size_t(s) * b.max_blocks + pos / block_size_], pos % block_size_);
  }
}

// Q/K/V biases (qwen2), then the per-head RMS norm of q and k (qwen3), on one token's row of node
// n's heads (its slice of the model's heads: query heads from head0, KV heads from kv0).
void Model::bias_and_qk_norm(const Node& n, const Layer& shared, const NodeLayer& L, float* row) const {
  const int hd = cfg_.head_dim;
  auto add = [&](const std::vector<float>& bias, int first_head, int heads, int off) {
    if (bias.empty()) return;
    const float* b = bias.data() + size_t(first_head) * hd;
    for (int i = 0; i < heads * hd; ++i) row[off + i] += b[i];
  };
  add(shared.q_bias, n.head0, n.nh, L.q_off);
  add(shared.k_bias, n.kv0, n.nkv, L.k_off);
  add(shared.v_bias, n.kv0, n.nkv, L.v_off);
  auto norm = [&](const std::vector<float>& w, int heads, int off) {
    if (w.empty()) return;
    for (int h = 0; h < heads; ++h) {
      float* v = row + off + h * hd;
      double ss = 0;
      for (int i = 0; i < hd; ++i) ss += double(v[i]) * v[i];
      const float scale = 1.f / std::sqrt(float(ss / hd) + cfg_.norm_eps);
      for (int i = 0; i < hd; ++i) v[i] = v[i] * scale * w[i];
    }
  };
  norm(shared.q_norm, n.nh, L.q_off);
  norm(shared.k_norm, n.nkv, L.k_off);
}

// RoPE on one token's q and k heads of node n: cs holds (cos, sin) of each frequency i. Pairs
// rotates dims (2i, 2i + 1) (llama); Halves rotates (i, i + rope_dim / 2) (NEOX: qwen2, qwen3).
void Model::rope_row(const Node& n, const NodeLayer& L, const float* cs, float* row) const {
  const int hd = cfg_.head_dim, half = cfg_.rope_dim / 2;
  const bool pairs = cfg_.rope_style == RopeStyle::Pairs;
  for (int h = 0; h < n.nh + n.nkv; ++h) {
    float* v = row + (h < n.nh ? L.q_off + h * hd : L.k_off + (h - n.nh) * hd);
    if (pairs) {
      for (int i = 0; i < half; ++i) {
        const float c = cs[2 * i], sn = cs[2 * i + 1], a = v[2 * i], bb = v[2 * i + 1];
        v[2 * i] = a * c - bb * sn;
        v[2 * i + 1] = a * sn + bb * c;
      }
    } else {
      for (int i = 0; i < half; ++i) {
        const float c = cs[2 * i], sn = cs[2 * i + 1], a = v[i], bb = v[i + half];
        v[i] = a * c - bb * sn;
        v[i + half] = a * sn + bb * c;
      }
    }
  }
}

// Node n's attention items: its query heads against its KV arena; ALiBi slopes of its heads.
void Model::attention(Node& n, int rank, int layer, const StepBatch& b) {
  const int hd = cfg_.head_dim, nkv = n.nkv;
  const NodeLayer& L = n.layers[layer];
  const AttnShape shape{n.nh, nkv, hd, block_size_, n_blocks_, 1.f / std::sqrt(float(hd)),
                        cfg_.positions == Positions::Alibi ? alibi_slopes_.data() + n.head0 : nullptr, key_chunk_};
  const size_t layer_elems = size_t(n_blocks_) * nkv * block_size_ * hd;
  const uint16_t* kc = n.k_cache.get() + size_t(layer) * layer_elems;
  const uint16_t* vc = n.v_cache.get() + size_t(layer) * layer_elems;
  float* scratch = n.attn_scratch.data() + size_t(rank) * n.attn_scratch_per_thread;
  const int n_items = int(n.attn_items.size());
  for (int i = n.attn_next[layer].fetch_add(1, std::memory_order_relaxed); i < n_items;
       i = n.attn_next[layer].fetch_add(1, std::memory_order_relaxed)) {
    const AttnItem& it = n.attn_items[i];
    run_attention_item(*kernels_, shape, it, n.qkv.get() + L.q_off, L.qkv.width, b.positions,
                       b.block_tables + size_t(it.seq) * b.max_blocks, kc, vc, scratch, n.attn.get(),
                       n.nh * hd, n.attn_partial.data(), n.max_chunks);
  }
}

void Model::combine_partials(Node& n, int rank) {
  const int hd = cfg_.head_dim, nh = n.nh;
  const int count = int(n.split_tokens.size()) * nh;
  int i0, i1;
  split_range(count, rank, n.n_threads, &i0, &i1);
  for (int i = i0; i < i1; ++i) {
    const int t = n.split_tokens[i / nh].first, chunks = n.split_tokens[i / nh].second, h = i % nh;
    const float* part = n.attn_partial.data() + (size_t(i / nh) * nh + h) * n.max_chunks * (hd + 2);
    combine_attention_partials(part, chunks, hd, n.attn.get() + size_t(t) * nh * hd + size_t(h) * hd);
  }
}

}  // namespace sysinfer
