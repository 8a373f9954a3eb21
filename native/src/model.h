// The model: packed weights, the paged KV cache, scratch buffers, and the step function that
// runs one whole forward pass for a batch of sequences.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kernels.h"
#include "threadpool.h"

namespace sysinfer {

struct ModelConfig {
  int n_layer = 0;
  int n_embd = 0;      // hidden size D
  int n_head = 0;      // query heads
  int n_head_kv = 0;   // key/value heads (GQA: n_head % n_head_kv == 0)
  int head_dim = 0;    // per-head size; n_head * head_dim need not equal n_embd
  int n_ff = 0;        // feed-forward size F
  int n_vocab = 0;
  int n_ctx = 0;       // longest sequence (positions are < n_ctx)
  float rms_eps = 1e-5f;
  bool use_rope = true;   // else ALiBi
  int rope_dim = 0;       // leading dims of each head that RoPE rotates (adjacent pairs)
  float rope_base = 10000.f;
  float alibi_max_bias = 8.f;
};

// A weight matrix as the kernels want it (see kernels.h: tiles of ROW_TILE rows).
struct Matrix {
  WType type = WType::F32;
  int rows = 0, cols = 0;
  std::shared_ptr<uint8_t> data;  // packed_bytes(type, rows, cols), 64-byte aligned
  int tiles() const { return padded_rows(rows) / ROW_TILE; }
  bool quantized() const { return type != WType::F32 && type != WType::F16; }
};

// Matrices applied to the same input whose outputs are laid side by side (fused Q/K/V or gate/up
// when the file's types allow one packed matrix, else one matrix each).
struct MatrixGroup {
  std::vector<Matrix> parts;
  std::vector<int> offsets;  // output column where each part starts
  int width = 0;             // total output columns (sum of padded rows)
  int tiles = 0;
  void add(Matrix m);
  bool any_quantized() const;
  bool any_float() const;
};

struct Layer {
  std::vector<float> attn_norm, ffn_norm;  // [D]
  MatrixGroup qkv;       // outputs q [n_head*hd], k [n_kv*hd], v [n_kv*hd] side by side
  MatrixGroup wo;        // [D] <- [n_head*hd]
  MatrixGroup gate_up;   // outputs gate [F], up [F] side by side
  MatrixGroup down;      // [D] <- [F]
};

// Inputs of one step; all arrays are owned by the caller (see Model::step).
struct StepBatch {
  int n_tok = 0, n_seq = 0, max_blocks = 0, n_out = 0;
  const int32_t* token_ids;     // [n_tok]
  const int32_t* positions;     // [n_tok]
  const int32_t* seq_starts;    // [n_seq + 1]
  const int32_t* block_tables;  // [n_seq][max_blocks]
  const int32_t* context_lens;  // [n_seq]
  const int32_t* logits_rows;   // [n_out] indices into token_ids
};

struct AttnItem;  // one unit of attention work (attention.h)

class Model {
 public:
  Model(const ModelConfig& cfg, int n_threads, const std::vector<int>& cpus);
  ~Model();

  // Loading: names are "token_embd", "output", "output_norm", "rope_freqs",
  // "blk.N.attn_norm", "blk.N.ffn_norm" (vectors) and "blk.N.qkv", "blk.N.wo", "blk.N.gate_up",
  // "blk.N.down" (matrices; the same group name may be given several times, parts in order).
  void add_matrix(const std::string& name, WType type, int rows, int cols, const uint8_t* gguf_data);
  void set_vector(const std::string& name, const float* data, int n);
  // Checks that every tensor is present and shaped as the config says; ties output to token_embd
  // when no output matrix was given.
  void finish_loading();

  // The paged KV cache and every scratch buffer of a step, allocated once.
  void init_cache(int n_blocks, int block_size, int max_step_tokens, int max_out_rows);

  // One forward pass; writes logits [n_out][n_vocab] (row i for token logits_rows[i]).
  // Throws std::invalid_argument on inconsistent input. Safe to call without the GIL.
  void step(const StepBatch& batch, float* logits);

  const ModelConfig& config() const { return cfg_; }
  const Kernels& kernels() const { return *kernels_; }
  ThreadPool& pool() { return *pool_; }
  size_t weight_bytes() const { return weight_bytes_; }
  size_t kv_bytes() const { return kv_bytes_; }
  int n_blocks() const { return n_blocks_; }
  int block_size() const { return block_size_; }
  int max_step_tokens() const { return max_step_tokens_; }

 private:
  void validate(const StepBatch& b) const;
  void plan_attention(const StepBatch& b);
  void forward(int tid, const StepBatch& b, float* logits);
  template <class F>
  void for_tile_chunks(int op, int n_tiles, const F& f);
  void matmul(int op, const MatrixGroup& g, const float* x, const ActBlock* xq, int n_tok, float* y);
  void rms_norm_rows(int tid, const float* x, const float* w, int n_rows, float* out, ActBlock* outq,
                     bool quantize);
  void rope_and_store_kv(int tid, int layer, const StepBatch& b);
  void swiglu(int tid, const Layer& L, int n_tok);
  void attention(int tid, int layer, const StepBatch& b);
  void combine_partials(int tid);
  Matrix make_matrix(WType type, int rows, int cols, const uint8_t* gguf_data);

  ModelConfig cfg_;
  const Kernels* kernels_;
  std::unique_ptr<ThreadPool> pool_;
  size_t weight_bytes_ = 0, kv_bytes_ = 0;

  Matrix token_embd_, output_;
  bool has_output_ = false;
  std::vector<float> output_norm_;  // [D]
  std::vector<float> rope_freqs_;   // [rope_dim / 2] divisors of each frequency (Llama 3.1), or empty
  std::vector<Layer> layers_;
  std::vector<float> inv_freq_;     // [rope_dim / 2]
  std::vector<float> alibi_slopes_; // [n_head]

  // KV cache, fp16: v_cache_[((layer * n_kv + head) * n_blocks + block) * block_size + slot][hd];
  // keys transposed within each block, k_cache_[((layer * n_kv + head) * n_blocks + block) * hd + dim][slot],
  // so attention scores run across a block's keys with no transpose at read time. A head's blocks
  // are adjacent, so a sequence whose blocks were handed out in order is one sequential stream.
  int n_blocks_ = 0, block_size_ = 0, max_step_tokens_ = 0, max_out_rows_ = 0;
  std::shared_ptr<uint16_t> k_cache_, v_cache_;

  // Step scratch, sized by init_cache for max_step_tokens rows (T):
  std::vector<float> x_;        // [T][D] residual stream
  std::vector<float> xn_;       // [T][max(D, F)] normed / activated input of a matmul
  std::vector<ActBlock> xq_;    // [T][max(D, F, n_head*hd) / 32] quantized matmul input
  std::vector<float> qkv_;      // [T][max(qkv width, D)]
  std::vector<float> attn_;     // [T][n_head * hd]
  std::vector<float> tmp_;      // [T][max(D, gate_up width)] matmul output
  std::vector<float> rope_cs_;  // [T][rope_dim] cos, sin interleaved per frequency
  std::vector<float> logits_pad_;  // [max_out][padded vocab]
  std::vector<AttnItem> attn_items_;   // planned per step
  std::unique_ptr<std::atomic<int>[]> attn_next_;  // [n_layer] next item a thread takes
  std::unique_ptr<std::atomic<int>[]> matmul_next_;  // [4 * n_layer + 1] next tile of each matmul
  std::vector<float> attn_partial_;    // [kMaxSplitTokens][n_head][max_splits][hd + 2] split-K partial results
  std::vector<float> attn_scratch_;    // [n_threads][per-thread attention scratch]
  size_t attn_scratch_per_thread_ = 0;
  int max_splits_ = 1;
  std::vector<std::pair<int, int>> split_tokens_;  // (token row, splits) of split-K attention
};

}  // namespace sysinfer
