#include "model.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <tuple>

#include "aligned_array.h"
#include "attention.h"

namespace sysinfer {

namespace {

// [begin, end) of n items for thread tid of nt: contiguous, balanced.
inline void split_range(int n, int tid, int nt, int* begin, int* end) {
  *begin = int(int64_t(n) * tid / nt);
  *end = int(int64_t(n) * (tid + 1) / nt);
}

[[noreturn]] void bad_input(const std::string& what) { throw std::invalid_argument(what); }

int block_size_of(WType t) { return t == WType::Q6_K ? QK_K : (t == WType::F32 || t == WType::F16) ? 1 : QK; }

// Tokens per attention work item for prefill, and the shortest key range worth its own split.
constexpr int kAttnTokensPerItem = 32;
constexpr int kMinKeysPerSplit = 128;
constexpr int kAttnItemsPerThread = 4;  // split-K aims for this many decode items per thread
constexpr int kMaxSplitTokens = 8;      // more decode tokens than this in a step: no split needed
// Matmul work chunks: about this many per thread, and never fewer tiles than this in one.
constexpr int kChunksPerThread = 4;
constexpr int kMinChunkTiles = 8;

}  // namespace

void MatrixGroup::add(Matrix m) {
  offsets.push_back(width);
  width += padded_rows(m.rows);
  tiles += m.tiles();
  parts.push_back(std::move(m));
}

bool MatrixGroup::any_quantized() const {
  return std::any_of(parts.begin(), parts.end(), [](const Matrix& m) { return m.quantized(); });
}

bool MatrixGroup::any_float() const {
  return std::any_of(parts.begin(), parts.end(), [](const Matrix& m) { return !m.quantized(); });
}

Model::Model(const ModelConfig& cfg, int n_threads, const std::vector<int>& cpus)
    : cfg_(cfg), kernels_(&select_kernels()) {
  if (cfg.n_layer <= 0 || cfg.n_embd <= 0 || cfg.n_head <= 0 || cfg.n_head_kv <= 0 ||
      cfg.head_dim <= 0 || cfg.n_ff <= 0 || cfg.n_vocab <= 0 || cfg.n_ctx <= 0)
    bad_input("model config: every size must be positive");
  if (cfg.n_head % cfg.n_head_kv != 0) bad_input("model config: n_head must be a multiple of n_head_kv");
  if (cfg.use_rope && (cfg.rope_dim <= 0 || cfg.rope_dim > cfg.head_dim || cfg.rope_dim % 2))
    bad_input("model config: rope_dim must be even and at most head_dim");
  layers_.resize(cfg.n_layer);
  pool_ = std::make_unique<ThreadPool>(n_threads, cpus);
  if (cfg.use_rope) {
    inv_freq_.resize(cfg.rope_dim / 2);
    for (int i = 0; i < cfg.rope_dim / 2; ++i)
      inv_freq_[i] = std::pow(cfg.rope_base, -2.f * i / cfg.rope_dim);
  } else {
    // ALiBi slopes: geometric in the nearest power of two of the head count, interleaved beyond.
    const int n = cfg.n_head;
    const int pow2 = 1 << int(std::floor(std::log2(double(n))));
    const float m0 = std::pow(2.f, -cfg.alibi_max_bias / pow2);
    const float m1 = std::pow(2.f, -cfg.alibi_max_bias / 2.f / pow2);
    alibi_slopes_.resize(n);
    for (int h = 0; h < n; ++h)
      alibi_slopes_[h] = h < pow2 ? std::pow(m0, float(h + 1)) : std::pow(m1, float(2 * (h - pow2) + 1));
  }
}

Model::~Model() = default;

Matrix Model::make_matrix(WType type, int rows, int cols, const uint8_t* gguf_data) {
  if (rows <= 0 || cols <= 0) bad_input("matrix with an empty dimension");
  if (cols % block_size_of(type) || cols % QK)
    bad_input("matrix columns must be a multiple of 32 and of the type's block size");
  Matrix m;
  m.type = type;
  m.rows = rows;
  m.cols = cols;
  const size_t bytes = packed_bytes(type, rows, cols);
  m.data = aligned_array<uint8_t>(bytes);
  pack_matrix(type, gguf_data, rows, cols, m.data.get());
  weight_bytes_ += bytes;
  return m;
}

void Model::add_matrix(const std::string& name, WType type, int rows, int cols, const uint8_t* data) {
  if (name == "token_embd") {
    token_embd_ = make_matrix(type, rows, cols, data);
    return;
  }
  if (name == "output") {
    output_ = make_matrix(type, rows, cols, data);
    has_output_ = true;
    return;
  }
  int layer = -1;
  char part[32] = {0};
  if (std::sscanf(name.c_str(), "blk.%d.%31s", &layer, part) != 2 || layer < 0 || layer >= cfg_.n_layer)
    bad_input("unknown matrix name: " + name);
  Layer& L = layers_[layer];
  const std::string p(part);
  MatrixGroup* g = p == "qkv" ? &L.qkv : p == "wo" ? &L.wo : p == "gate_up" ? &L.gate_up
                 : p == "down" ? &L.down : nullptr;
  if (!g) bad_input("unknown matrix name: " + name);
  g->add(make_matrix(type, rows, cols, data));
}

void Model::set_vector(const std::string& name, const float* data, int n) {
  std::vector<float> v(data, data + n);
  if (name == "output_norm") { output_norm_ = std::move(v); return; }
  if (name == "rope_freqs") { rope_freqs_ = std::move(v); return; }
  int layer = -1;
  char part[32] = {0};
  if (std::sscanf(name.c_str(), "blk.%d.%31s", &layer, part) != 2 || layer < 0 || layer >= cfg_.n_layer)
    bad_input("unknown vector name: " + name);
  const std::string p(part);
  if (p == "attn_norm") layers_[layer].attn_norm = std::move(v);
  else if (p == "ffn_norm") layers_[layer].ffn_norm = std::move(v);
  else bad_input("unknown vector name: " + name);
}

static void check_group(const MatrixGroup& g, int want_rows, int want_cols, const std::string& what) {
  int rows = 0;
  for (const Matrix& m : g.parts) {
    if (m.cols != want_cols) bad_input(what + ": wrong input width");
    rows += m.rows;
  }
  if (g.parts.empty() || rows != want_rows) bad_input(what + ": missing or wrong output size");
  for (size_t i = 0; i < g.parts.size(); ++i)
    if (g.parts[i].rows % ROW_TILE && i + 1 < g.parts.size())
      bad_input(what + ": fused parts need row counts that are multiples of 8");
}

void Model::finish_loading() {
  const int D = cfg_.n_embd, hd = cfg_.head_dim, F = cfg_.n_ff;
  if (token_embd_.rows != cfg_.n_vocab || token_embd_.cols != D) bad_input("token_embd: wrong shape");
  if (!has_output_) output_ = token_embd_;  // tied embeddings
  if (output_.rows != cfg_.n_vocab || output_.cols != D) bad_input("output: wrong shape");
  if (int(output_norm_.size()) != D) bad_input("output_norm: wrong size");
  if (!rope_freqs_.empty() && int(rope_freqs_.size()) != cfg_.rope_dim / 2) bad_input("rope_freqs: wrong size");
  for (size_t i = 0; i < rope_freqs_.size(); ++i) inv_freq_[i] /= rope_freqs_[i];
  for (int l = 0; l < cfg_.n_layer; ++l) {
    const Layer& L = layers_[l];
    const std::string at = "layer " + std::to_string(l);
    if (int(L.attn_norm.size()) != D || int(L.ffn_norm.size()) != D) bad_input(at + ": norm size");
    check_group(L.qkv, (cfg_.n_head + 2 * cfg_.n_head_kv) * hd, D, at + " qkv");
    check_group(L.wo, D, cfg_.n_head * hd, at + " wo");
    check_group(L.gate_up, 2 * F, D, at + " gate_up");
    check_group(L.down, D, F, at + " down");
    // Q, K, V and gate, up must start where the step reads them.
    const int q = cfg_.n_head * hd, kv = cfg_.n_head_kv * hd;
    if (L.qkv.width != padded_rows(q) + 2 * padded_rows(kv) && L.qkv.width != q + 2 * kv)
      bad_input(at + ": q/k/v split");
    if (q % ROW_TILE || kv % ROW_TILE || F % ROW_TILE) bad_input(at + ": head and ffn sizes must be multiples of 8");
  }
}

void Model::init_cache(int n_blocks, int block_size, int max_step_tokens, int max_out_rows) {
  if (n_blocks <= 0 || block_size <= 0 || max_step_tokens <= 0 || max_out_rows <= 0)
    bad_input("init_cache: sizes must be positive");
  if (max_out_rows > max_step_tokens) bad_input("init_cache: max_out_rows must not exceed max_step_tokens");
  const int D = cfg_.n_embd, F = cfg_.n_ff, hd = cfg_.head_dim, T = max_step_tokens;
  n_blocks_ = n_blocks;
  block_size_ = block_size;
  max_step_tokens_ = T;
  max_out_rows_ = max_out_rows;
  const size_t kv_elems = size_t(cfg_.n_layer) * n_blocks * cfg_.n_head_kv * block_size * hd;
  k_cache_ = aligned_array<uint16_t>(kv_elems);
  v_cache_ = aligned_array<uint16_t>(kv_elems);
  kv_bytes_ = 2 * kv_elems * sizeof(uint16_t);

  const int qkv_width = layers_[0].qkv.width, gu_width = layers_[0].gate_up.width;
  const int widest_in = std::max({D, F, cfg_.n_head * hd});
  x_.assign(size_t(T) * D, 0.f);
  xn_.assign(size_t(T) * widest_in, 0.f);
  xq_.assign(size_t(T) * widest_in / QK, ActBlock{});
  qkv_.assign(size_t(T) * std::max(qkv_width, padded_rows(D)), 0.f);  // also holds down's output
  attn_.assign(size_t(T) * cfg_.n_head * hd, 0.f);
  tmp_.assign(size_t(T) * std::max({D, gu_width, padded_rows(D)}), 0.f);
  rope_cs_.assign(size_t(T) * std::max(cfg_.rope_dim, 2), 0.f);
  logits_pad_.assign(size_t(max_out_rows) * padded_rows(cfg_.n_vocab), 0.f);

  max_splits_ = std::max(1, std::min(kAttnItemsPerThread * pool_->size(), 32));
  attn_next_.reset(new std::atomic<int>[cfg_.n_layer]);
  matmul_next_.reset(new std::atomic<int>[4 * cfg_.n_layer + 1]);
  attn_partial_.assign(size_t(kMaxSplitTokens) * cfg_.n_head * max_splits_ * (hd + 2), 0.f);
  AttnShape shape{cfg_.n_head, cfg_.n_head_kv, hd, block_size, n_blocks, 0.f, nullptr};
  attn_scratch_per_thread_ = (attention_scratch_floats(shape, kAttnTokensPerItem) + 15) / 16 * 16;
  attn_scratch_.assign(attn_scratch_per_thread_ * pool_->size(), 0.f);
  // Worst case: every token its own sequence with every split, or prefill chunks of every head.
  attn_items_.reserve(size_t(cfg_.n_head_kv) * (T + kMaxSplitTokens * max_splits_));
  split_tokens_.reserve(kMaxSplitTokens);
}

void Model::validate(const StepBatch& b) const {
  if (!k_cache_) bad_input("step: init_cache was not called");
  if (b.n_tok <= 0 || b.n_tok > max_step_tokens_)
    bad_input("step: token count must be in 1.." + std::to_string(max_step_tokens_));
  if (b.n_seq <= 0 || b.n_out < 0 || b.n_out > max_out_rows_) bad_input("step: bad sequence or logits row count");
  if (b.seq_starts[0] != 0 || b.seq_starts[b.n_seq] != b.n_tok) bad_input("step: seq_starts must run from 0 to n_tok");
  for (int s = 0; s < b.n_seq; ++s) {
    const int t0 = b.seq_starts[s], t1 = b.seq_starts[s + 1];
    if (t1 <= t0) bad_input("step: every sequence needs at least one new token");
    const int ctx = b.context_lens[s];
    if (ctx < t1 - t0 || ctx > cfg_.n_ctx) bad_input("step: context length out of range");
    if ((ctx + block_size_ - 1) / block_size_ > b.max_blocks) bad_input("step: block table too short");
    for (int t = t0; t < t1; ++t) {
      // New tokens are the sequence's last (t1 - t0) positions, in order.
      if (b.positions[t] != ctx - (t1 - t) ) bad_input("step: positions must be the last context positions, in order");
      if (b.token_ids[t] < 0 || b.token_ids[t] >= cfg_.n_vocab) bad_input("step: token id out of range");
    }
    const int32_t* table = b.block_tables + size_t(s) * b.max_blocks;
    for (int i = 0; i < (ctx + block_size_ - 1) / block_size_; ++i)
      if (table[i] < 0 || table[i] >= n_blocks_) bad_input("step: block id out of range");
  }
  for (int i = 0; i < b.n_out; ++i)
    if (b.logits_rows[i] < 0 || b.logits_rows[i] >= b.n_tok) bad_input("step: logits row out of range");
}

void Model::plan_attention(const StepBatch& b) {
  attn_items_.clear();
  split_tokens_.clear();
  // Few single-token (decode) sequences give few items (one per KV head): split their keys so that
  // every thread gets several items, as long as each split keeps kMinKeysPerSplit keys.
  int n_single = 0;
  for (int s = 0; s < b.n_seq; ++s) n_single += b.seq_starts[s + 1] - b.seq_starts[s] == 1;
  const int wanted = n_single == 0 || n_single > kMaxSplitTokens ? 1
      : (kAttnItemsPerThread * pool_->size() + cfg_.n_head_kv * n_single - 1) / (cfg_.n_head_kv * n_single);
  for (int s = 0; s < b.n_seq; ++s) {
    const int t0 = b.seq_starts[s], t1 = b.seq_starts[s + 1], ctx = b.context_lens[s];
    int splits = 1;
    if (t1 - t0 == 1) splits = std::max(1, std::min({max_splits_, wanted, ctx / kMinKeysPerSplit}));
    const int partial_row = splits > 1 ? int(split_tokens_.size()) : -1;
    if (splits > 1) split_tokens_.push_back({t0, splits});
    for (int h = 0; h < cfg_.n_head_kv; ++h) {
      if (splits > 1) {
        for (int p = 0; p < splits; ++p) {
          const int k0 = int(int64_t(ctx) * p / splits), k1 = int(int64_t(ctx) * (p + 1) / splits);
          attn_items_.push_back({s, h, t0, t1, k0, k1, p, partial_row});
        }
        continue;
      }
      for (int c = t0; c < t1; c += kAttnTokensPerItem)
        attn_items_.push_back({s, h, c, std::min(t1, c + kAttnTokensPerItem), 0, ctx, -1, -1});
    }
  }
  // Threads take items dynamically, the costliest (most keys) first, so the last ones are short.
  // (std::sort: no allocation inside a step; the order never changes a result, only who does what.)
  auto cost = [&](const AttnItem& it) {
    const int keys = std::min(it.key_end, b.positions[it.tok_end - 1] + 1) - it.key_begin;
    return int64_t(it.tok_end - it.tok_begin) * keys;
  };
  std::sort(attn_items_.begin(), attn_items_.end(), [&](const AttnItem& x, const AttnItem& y) {
    const int64_t cx = cost(x), cy = cost(y);
    return cx != cy ? cx > cy : std::tie(x.seq, x.kv_head, x.tok_begin, x.split) < std::tie(y.seq, y.kv_head, y.tok_begin, y.split);
  });
  for (int l = 0; l < cfg_.n_layer; ++l) attn_next_[l].store(0, std::memory_order_relaxed);
}

void Model::step(const StepBatch& b, float* logits) {
  validate(b);
  plan_attention(b);
  for (int i = 0; i < 4 * cfg_.n_layer + 1; ++i) matmul_next_[i].store(0, std::memory_order_relaxed);
  auto task = [&](int tid) { forward(tid, b, logits); };
  pool_->run(task);
}

// Calls f(tile0, tile1) for chunks of tiles [0, n_tiles) of matmul number `op` of this step,
// each chunk taken by whichever thread is free (an atomic counter per matmul, reset every step):
// on a shared machine a core slowed by a neighbour no longer holds the other at the next barrier.
// A chunk is a contiguous run of tiles, so each thread still streams weights sequentially; which
// thread computes a tile never changes its result.
template <class F>
void Model::for_tile_chunks(int op, int n_tiles, const F& f) {
  const int chunk = std::max(kMinChunkTiles, n_tiles / (pool_->size() * kChunksPerThread));
  std::atomic<int>& next = matmul_next_[op];
  for (int c = next.fetch_add(chunk, std::memory_order_relaxed); c < n_tiles;
       c = next.fetch_add(chunk, std::memory_order_relaxed))
    f(c, std::min(n_tiles, c + chunk));
}

// y[t][...] = group(x[t]) for every token; threads take the group's tiles in chunks.
void Model::matmul(int op, const MatrixGroup& g, const float* x, const ActBlock* xq, int n_tok, float* y) {
  for_tile_chunks(op, g.tiles, [&](int tile0, int tile1) {
    int first = 0;
    for (size_t i = 0; i < g.parts.size(); ++i) {
      const Matrix& m = g.parts[i];
      const int lo = std::max(tile0 - first, 0), hi = std::min(tile1 - first, m.tiles());
      if (lo < hi)
        kernels_->gemm(m.type, m.data.get(), m.cols, lo, hi, m.quantized() ? static_cast<const void*>(xq) : x,
                       n_tok, y + g.offsets[i], g.width);
      first += m.tiles();
    }
  });
}

// out[r] = x[r] / rms(x[r]) * w for rows split across threads; optionally quantized as well.
void Model::rms_norm_rows(int tid, const float* x, const float* w, int n_rows, float* out, ActBlock* outq,
                          bool quantize) {
  const int D = cfg_.n_embd;
  int r0, r1;
  split_range(n_rows, tid, pool_->size(), &r0, &r1);
  for (int r = r0; r < r1; ++r) {
    const float* xr = x + size_t(r) * D;
    float* o = out + size_t(r) * D;
    double ss = 0;
    for (int i = 0; i < D; ++i) ss += double(xr[i]) * xr[i];
    const float scale = 1.f / std::sqrt(float(ss / D) + cfg_.rms_eps);
    for (int i = 0; i < D; ++i) o[i] = xr[i] * scale * w[i];
    if (quantize) kernels_->quantize_act(o, outq + size_t(r) * (D / QK), D);
  }
}

// RoPE on this step's q and k (adjacent pairs), then k and v into the paged cache as fp16.
void Model::rope_and_store_kv(int tid, int layer, const StepBatch& b) {
  const int hd = cfg_.head_dim, nq = cfg_.n_head, nkv = cfg_.n_head_kv, W = layers_[layer].qkv.width;
  const int q_off = 0, k_off = nq * hd, v_off = k_off + nkv * hd;
  int t0, t1;
  split_range(b.n_tok, tid, pool_->size(), &t0, &t1);
  uint16_t* kc = k_cache_.get() + size_t(layer) * n_blocks_ * nkv * block_size_ * hd;
  uint16_t* vc = v_cache_.get() + size_t(layer) * n_blocks_ * nkv * block_size_ * hd;
  int s = 0;
  for (int t = t0; t < t1; ++t) {
    while (b.seq_starts[s + 1] <= t) ++s;
    float* row = qkv_.data() + size_t(t) * W;
    if (cfg_.use_rope) {
      const float* cs = rope_cs_.data() + size_t(t) * cfg_.rope_dim;
      for (int h = 0; h < nq + nkv; ++h) {
        float* v = row + (h < nq ? q_off + h * hd : k_off + (h - nq) * hd);
        for (int i = 0; i < cfg_.rope_dim / 2; ++i) {
          const float c = cs[2 * i], sn = cs[2 * i + 1], a = v[2 * i], bb = v[2 * i + 1];
          v[2 * i] = a * c - bb * sn;
          v[2 * i + 1] = a * sn + bb * c;
        }
      }
    }
    const int pos = b.positions[t];
    const int blk = b.block_tables[size_t(s) * b.max_blocks + pos / block_size_];
    const int slot = pos % block_size_;
    for (int h = 0; h < nkv; ++h) {
      const size_t head_base = (size_t(h) * n_blocks_ + blk) * block_size_ * hd;
      kernels_->f32_to_f16(row + v_off + h * hd, vc + head_base + size_t(slot) * hd, hd);
      const float* key = row + k_off + h * hd;
      for (int i = 0; i < hd; ++i) kc[head_base + size_t(i) * block_size_ + slot] = fp32_to_fp16(key[i]);
    }
  }
}

void Model::attention(int tid, int layer, const StepBatch& b) {
  const int hd = cfg_.head_dim, nkv = cfg_.n_head_kv;
  const AttnShape shape{cfg_.n_head, nkv, hd, block_size_, n_blocks_, 1.f / std::sqrt(float(hd)),
                        cfg_.use_rope ? nullptr : alibi_slopes_.data()};
  const size_t layer_elems = size_t(n_blocks_) * nkv * block_size_ * hd;
  const uint16_t* kc = k_cache_.get() + size_t(layer) * layer_elems;
  const uint16_t* vc = v_cache_.get() + size_t(layer) * layer_elems;
  float* scratch = attn_scratch_.data() + size_t(tid) * attn_scratch_per_thread_;
  const int n_items = int(attn_items_.size());
  for (int i = attn_next_[layer].fetch_add(1, std::memory_order_relaxed); i < n_items;
       i = attn_next_[layer].fetch_add(1, std::memory_order_relaxed)) {
    const AttnItem& it = attn_items_[i];
    run_attention_item(*kernels_, shape, it, qkv_.data(), layers_[layer].qkv.width, b.positions,
                       b.block_tables + size_t(it.seq) * b.max_blocks, kc, vc, scratch, attn_.data(),
                       cfg_.n_head * hd, attn_partial_.data(), max_splits_);
  }
}

void Model::combine_partials(int tid) {
  const int hd = cfg_.head_dim, nh = cfg_.n_head;
  const int n = int(split_tokens_.size()) * nh;
  int i0, i1;
  split_range(n, tid, pool_->size(), &i0, &i1);
  for (int i = i0; i < i1; ++i) {
    const int t = split_tokens_[i / nh].first, splits = split_tokens_[i / nh].second, h = i % nh;
    const float* part = attn_partial_.data() + (size_t(i / nh) * nh + h) * max_splits_ * (hd + 2);
    combine_attention_partials(part, splits, hd, attn_.data() + size_t(t) * nh * hd + size_t(h) * hd);
  }
}

// SwiGLU, a = silu(gate) * up (the input of the down projection), quantized for it where it takes
// Q8_0 blocks. Threads split the [T][F / 32] blocks, not the tokens: a decode step's one token
// would leave every thread but one waiting.
void Model::swiglu(int tid, const Layer& L, int n_tok) {
  const int F = cfg_.n_ff, blocks_per_tok = F / QK;
  const int up_off = L.gate_up.parts.size() == 1 ? F : L.gate_up.offsets[1];
  const bool quantize = L.down.any_quantized();
  int b0, b1;
  split_range(n_tok * blocks_per_tok, tid, pool_->size(), &b0, &b1);
  for (int blk = b0; blk < b1; ++blk) {  // block blk: token t, columns [i0, i0 + QK); xq_[blk] in [T][F / QK]
    const int t = blk / blocks_per_tok, i0 = (blk % blocks_per_tok) * QK;
    const float* g = tmp_.data() + size_t(t) * L.gate_up.width;  // [gate | up] row of token t
    float* a = xn_.data() + size_t(t) * F;
    for (int i = i0; i < i0 + QK; ++i) a[i] = g[i] / (1.f + std::exp(-g[i])) * g[up_off + i];
    if (quantize) kernels_->quantize_act(a + i0, xq_.data() + blk, QK);
  }
}

void Model::forward(int tid, const StepBatch& b, float* logits) {
  const int D = cfg_.n_embd, T = b.n_tok, nt = pool_->size();
  const int A = cfg_.n_head * cfg_.head_dim;
  int t0, t1;
  split_range(T, tid, nt, &t0, &t1);
  // Embeddings and this step's RoPE angles.
  for (int t = t0; t < t1; ++t) {
    dequantize_packed_row(token_embd_.type, token_embd_.data.get(), D, b.token_ids[t], x_.data() + size_t(t) * D);
    if (cfg_.use_rope) {
      float* cs = rope_cs_.data() + size_t(t) * cfg_.rope_dim;
      for (int i = 0; i < cfg_.rope_dim / 2; ++i) {
        const float angle = float(b.positions[t]) * inv_freq_[i];
        cs[2 * i] = std::cos(angle);
        cs[2 * i + 1] = std::sin(angle);
      }
    }
  }
  pool_->barrier();

  int op = 0;  // matmuls of this step in order: every thread counts them the same way
  for (int l = 0; l < cfg_.n_layer; ++l) {
    const Layer& L = layers_[l];
    rms_norm_rows(tid, x_.data(), L.attn_norm.data(), T, xn_.data(), xq_.data(), L.qkv.any_quantized());
    pool_->barrier();
    matmul(op++, L.qkv, xn_.data(), xq_.data(), T, qkv_.data());
    pool_->barrier();
    rope_and_store_kv(tid, l, b);
    pool_->barrier();
    attention(tid, l, b);
    pool_->barrier();
    if (!split_tokens_.empty()) {
      combine_partials(tid);
      pool_->barrier();
    }
    if (L.wo.any_quantized())
      for (int t = t0; t < t1; ++t)
        kernels_->quantize_act(attn_.data() + size_t(t) * A, xq_.data() + size_t(t) * (A / QK), A);
    pool_->barrier();
    matmul(op++, L.wo, attn_.data(), xq_.data(), T, tmp_.data());
    pool_->barrier();
    for (int t = t0; t < t1; ++t)
      for (int i = 0; i < D; ++i) x_[size_t(t) * D + i] += tmp_[size_t(t) * L.wo.width + i];
    pool_->barrier();  // rms_norm_rows splits rows the same way, but keep the phases explicit
    rms_norm_rows(tid, x_.data(), L.ffn_norm.data(), T, xn_.data(), xq_.data(), L.gate_up.any_quantized());
    pool_->barrier();
    matmul(op++, L.gate_up, xn_.data(), xq_.data(), T, tmp_.data());
    pool_->barrier();
    swiglu(tid, L, T);
    pool_->barrier();
    matmul(op++, L.down, xn_.data(), xq_.data(), T, qkv_.data());  // qkv_ is free again: reuse it
    pool_->barrier();
    for (int t = t0; t < t1; ++t)
      for (int i = 0; i < D; ++i) x_[size_t(t) * D + i] += qkv_[size_t(t) * L.down.width + i];
    pool_->barrier();
  }

  // Final norm of the rows whose logits are wanted, gathered into rows 0..n_out-1 of xn_.
  int o0, o1;
  split_range(b.n_out, tid, nt, &o0, &o1);
  for (int o = o0; o < o1; ++o) {
    const float* xr = x_.data() + size_t(b.logits_rows[o]) * D;
    std::copy(xr, xr + D, tmp_.data() + size_t(o) * D);
  }
  pool_->barrier();
  rms_norm_rows(tid, tmp_.data(), output_norm_.data(), b.n_out, xn_.data(), xq_.data(), output_.quantized());
  pool_->barrier();
  {
    const int V = padded_rows(cfg_.n_vocab);
    if (b.n_out > 0)
      for_tile_chunks(op, output_.tiles(), [&](int tile0, int tile1) {
        kernels_->gemm(output_.type, output_.data.get(), D, tile0, tile1,
                       output_.quantized() ? static_cast<const void*>(xq_.data()) : xn_.data(), b.n_out,
                       logits_pad_.data(), V);
      });
    pool_->barrier();
    for (int o = o0; o < o1; ++o)
      std::copy(logits_pad_.data() + size_t(o) * V, logits_pad_.data() + size_t(o) * V + cfg_.n_vocab,
                logits + size_t(o) * cfg_.n_vocab);
  }
}

}  // namespace sysinfer
