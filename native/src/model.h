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
#include "model_desc.h"
#include "numa.h"
#include "threadpool.h"

namespace sysinfer {

// A weight matrix as the kernels want it (see kernels.h: tiles of ROW_TILE rows).
struct Matrix {
  WType type = WType::F32;
  int rows = 0, cols = 0;
  std::shared_ptr<uint8_t> data;  // packed_bytes(type, rows, cols), 64-byte aligned
  size_t bytes() const { return packed_bytes(type, rows, cols); }
  int tiles() const { return padded_rows(rows) / ROW_TILE; }
  bool quantized() const { return !is_float_type(type); }
};

// One matrix as the file stores it (rows x cols in GGUF blocks), checked and packed into tiles in the
// memory of NUMA node mem_node (-1: wherever the allocator puts it); *bind, if given, says how the
// binding went. Decoders (per node) and encoders (mem_node -1) load every matrix through it.
Matrix pack_new_matrix(WType type, int rows, int cols, const uint8_t* gguf_data, int mem_node,
                       BindStatus* bind = nullptr);

// Whether a group's parts (as the file has them) pack as one matrix: they share a type and every part
// but the last fills whole tiles (fused Q/K/V, gate/up: one pass over the input, fewer tiles at the seams).
bool fusable(const std::vector<const TensorDesc*>& parts);

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
  int act_group() const;  // the largest of its parts' act_group (1 if it has no parts)
};

// Tensor parallel across NUMA nodes: what each node holds of every layer. KV heads [kv0, kv1) with
// their query heads, FFN columns [ff0, ff1) (gate/up rows and the matching down columns), output rows
// [vocab0, vocab1). A mixture of experts cuts its experts' down by rows instead, [down0, down1) of the
// model's width, each over all of the FFN columns: the columns of an expert (768 in Qwen3-30B-A3B)
// are 3 K-quant blocks, which 2 nodes can only cut 1 : 2 and a 4th node not at all. Shares cut [0, n)
// in order; a share may be empty. One node holding everything is the single-node model.
struct NodeShare {
  int kv0 = 0, kv1 = 0, ff0 = 0, ff1 = 0, vocab0 = 0, vocab1 = 0;
  int down0 = 0, down1 = 0;  // MoE only; empty on one node: all of it
};

struct NodeSpec {
  int n_threads = 1;
  std::vector<int> cpus;  // one per thread, or empty: not pinned
  int mem_node = -1;      // OS node its weights, KV arena and scratch are bound to; -1: not bound
  NodeShare share;
};

struct Layer {                               // what every node shares
  std::vector<float> attn_norm, ffn_norm;  // [D]
  std::vector<float> q_bias, k_bias, v_bias;  // [n_head * hd], [n_head_kv * hd] x 2, or empty
  std::vector<float> q_norm, k_norm;       // [hd] per-head RMS norm weights before RoPE, or empty
  Matrix router;                           // MoE: [n_expert][D] router (ffn_gate_inp), read by every node
  int rows_seen[4] = {0, 0, 0, 0};         // rows given so far of qkv, wo, gate_up, down (loading)
  // Activation blocks sharing one scale (kernels.h's act_group) in the quantized inputs of qkv, wo, the
  // FFN (gate_up; MoE: the router and the experts' gate/up) and down (MoE: the experts' down), over
  // every node's parts: set by finish_loading.
  int act_group[4] = {1, 1, 1, 1};
};

struct NodeLayer {                           // one node's slice of a layer
  MatrixGroup qkv;       // outputs q [nh*hd] at q_off, k [nkv*hd] at k_off, v [nkv*hd] at v_off
  MatrixGroup wo;        // [D] <- [nh*hd]: this node's columns; its output is a partial sum
  MatrixGroup gate_up;   // outputs gate [nf] at 0, up [nf] at up_off
  MatrixGroup down;      // [D] <- [nf]: this node's columns; a partial sum
  // MoE: every expert's slice on this node, as gate_up / down above (up at up_off in each).
  std::vector<MatrixGroup> exp_gate_up, exp_down;  // [n_expert]
  int q_off = -1, k_off = -1, v_off = -1, up_off = -1;
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

// Everything one NUMA node owns: its weight slices, its KV arena (only its KV heads; block id b
// names the same token slots in every node's arena), its step scratch and work counters. All big
// buffers are bound to mem_node.
struct Node {
  NodeSpec spec;
  int head0 = 0, nh = 0, kv0 = 0, nkv = 0, ff0 = 0, nf = 0, vocab0 = 0, nvocab = 0;
  int dr0 = 0, ndr = 0;                    // MoE: rows [dr0, dr0 + ndr) of every expert's down
  int thread0 = 0, n_threads = 1;          // its threads in the pool
  BindStatus bind = BindStatus::kNotAsked; // worst outcome over its allocations
  size_t weight_bytes = 0, kv_bytes = 0;
  std::vector<NodeLayer> layers;
  Matrix output;                           // vocab rows [vocab0, vocab0 + nvocab)

  // KV cache, fp16, this node's heads only: v[((layer * nkv + head) * n_blocks + block) * block_size + slot][hd];
  // keys transposed within each block, k[((layer * nkv + head) * n_blocks + block) * hd + dim][slot],
  // so attention scores run across a block's keys with no transpose at read time. A head's blocks
  // are adjacent, so a sequence whose blocks were handed out in order is one sequential stream.
  std::shared_ptr<uint16_t> k_cache, v_cache;

  // Step scratch, for T = max_step_tokens rows:
  std::shared_ptr<float> qkv;       // [T][qkv width]
  std::shared_ptr<float> attn;      // [T][nh * hd] attention output of this node's heads
  std::shared_ptr<ActBlock> xq;     // [T][max(nh * hd, nf) / 32] quantized input of wo, then down
  std::shared_ptr<float> gate_up;   // [T][gate_up width]
  std::shared_ptr<float> act;       // [T][nf] silu(gate) * up
  std::shared_ptr<float> part;      // [T][D] this node's partial sum of wo, then of down
  // MoE (S = T * n_expert_used expert rows of a step; gate_up, act and xq then hold S rows, xq of
  // the whole FFN width across nodes):
  std::shared_ptr<float> moe_out;   // [S][D] each expert row's down output (columns [dr0, dr0 + ndr))
  std::vector<AttnItem> attn_items;                 // planned per step
  std::unique_ptr<std::atomic<int>[]> attn_next;    // [n_layer] next item a thread of the node takes
  std::unique_ptr<std::atomic<int>[]> matmul_next;  // [4 * n_layer + 1] next tile of each matmul
  std::vector<float> attn_partial;  // [kMaxSplitTokens][nh][max_chunks][hd + 2] split-K chunk results
  std::vector<float> attn_scratch;  // [n_threads][per-thread attention scratch]
  size_t attn_scratch_per_thread = 0;
  int max_chunks = 1;               // softmax chunks of the longest context
  std::vector<std::pair<int, int>> split_tokens;  // (token row, chunks) of split-K attention, in partial-row order
};

class Model {
 public:
  // Checks the description (check_description) and the node plan; sets up the threads.
  Model(const ModelDesc& desc, const std::vector<NodeSpec>& nodes);
  ~Model();

  // Loading, one layer at a time (layer -1: the model-wide tensors): data[i] holds the file's bytes
  // of tensor layer_tensors(layer)[i] (TensorDesc::bytes() of them). Every node packs its own slice.
  std::vector<int> layer_tensors(int layer) const;  // indices into desc.tensors, in order
  void load(int layer, const std::vector<const uint8_t*>& data);
  // Checks that every layer was loaded; ties output to token_embd when the description has no
  // output matrix.
  void finish_loading();

  // The paged KV cache and every scratch buffer of a step, allocated once.
  void init_cache(int n_blocks, int block_size, int max_step_tokens, int max_out_rows);

  // One forward pass; writes logits [n_out][n_vocab] (row i for token logits_rows[i]).
  // Throws std::invalid_argument on inconsistent input. Safe to call without the GIL.
  void step(const StepBatch& batch, float* logits);

  const ModelDesc& config() const { return cfg_; }
  const Kernels& kernels() const { return *kernels_; }
  ThreadPool& pool() { return *pool_; }
  size_t weight_bytes() const { return weight_bytes_; }
  size_t kv_bytes() const { return kv_bytes_; }
  const std::vector<Node>& nodes() const { return nodes_; }
  const Matrix& token_embd() const { return token_embd_; }
  int n_blocks() const { return n_blocks_; }
  int block_size() const { return block_size_; }
  int max_step_tokens() const { return max_step_tokens_; }
  // MoE: layer steps routed so far and the experts they chose between them (distinct per layer step):
  // what a step of r rows reads of the experts (benchmarks/rows_cost.py).
  std::pair<uint64_t, uint64_t> moe_counts() const {
    return {moe_layer_steps_.load(std::memory_order_relaxed), moe_active_sum_.load(std::memory_order_relaxed)};
  }

 private:
  void validate(const StepBatch& b) const;
  void plan_attention(Node& n, const StepBatch& b);
  void forward(int tid, const StepBatch& b, float* logits);
  template <class F>
  void for_tile_chunks(Node& n, int op, int n_tiles, const F& f);
  void matmul(Node& n, int op, const MatrixGroup& g, const float* x, const ActBlock* xq, int n_tok, float* y, int ldy);
  void reduce_and_norm(int tid, const float* w, bool add_attn, bool add_ffn, int group, int n_tok);
  void rms_norm_rows(int tid, const float* x, const float* w, int n_rows, float* out, ActBlock* outq, int group);
  void plan_act_groups();
  void rope_and_store_kv(Node& n, int rank, int layer, const StepBatch& b);
  void swiglu(Node& n, int rank, const NodeLayer& L, int group, int n_tok);
  void attention(Node& n, int rank, int layer, const StepBatch& b);
  void combine_partials(Node& n, int rank);
  void rope_tables();
  // Mixture of experts (model_moe.cpp).
  void load_experts(int layer, const TensorDesc* parts[4], const uint8_t* data[4]);
  Matrix arena_matrix(const std::shared_ptr<uint8_t>& arena, size_t* at, WType type, int rows, int cols,
                      const uint8_t* gguf_data, Node& owner);
  void check_experts(int layer) const;
  void init_moe_scratch(int max_step_tokens);
  void moe_ffn(int tid, Node& n, int rank, int layer, int op, int n_tok);
  void moe_router(int layer, int tile0, int tile1, int n_tok);
  void moe_route(int n_tok);
  void moe_matmul(Node& n, int op, const std::vector<MatrixGroup>& groups, const float* x, const ActBlock* xq,
                  int x_stride, float* y, int ldy);
  void moe_group_gemm(const MatrixGroup& g, int lo, int hi, const float* x, const ActBlock* xq, int x_stride, int r0,
                      int rows, float* y, int ldy);
  void moe_swiglu_unit(Node& n, const NodeLayer& L, int unit, int group, float* act, int ld, bool quantize);
  void moe_ffn_nodes(int tid, Node& n, int rank, int layer, int op, int n_tok);
  void moe_experts_whole(Node& n, int op, const NodeLayer& L, int group);  // group: act_group of down
  void moe_combine_row(const Node& n, int row) const;
  Matrix make_matrix(WType type, int rows, int cols, const uint8_t* gguf_data, Node* owner);
  void load_model_wide(const std::vector<int>& index, const std::vector<const uint8_t*>& data);
  void load_group(int layer, int group, const std::vector<const TensorDesc*>& parts,
                  const std::vector<const uint8_t*>& data);
  void add_layer_matrix(int layer, int group, WType type, int rows, int cols, const uint8_t* data);
  void tie_output();
  void bias_and_qk_norm(const Node& n, const Layer& shared, const NodeLayer& L, float* row) const;
  void rope_row(const Node& n, const NodeLayer& L, const float* cs, float* row) const;
  void store_kv(Node& n, int layer, const NodeLayer& L, const float* row, int block, int slot);

  ModelDesc cfg_;
  const Kernels* kernels_;
  std::unique_ptr<ThreadPool> pool_;
  std::vector<Node> nodes_;
  size_t weight_bytes_ = 0, kv_bytes_ = 0;

  Matrix token_embd_, output_;  // output_: the whole output matrix until finish_loading slices it
  bool has_output_ = false;
  int out_act_group_ = 1;  // act_group of the output matrix's input (plan_act_groups)
  std::vector<bool> loaded_;        // [n_layer + 1]: model-wide tensors at 0, layer l at l + 1
  std::vector<float> output_norm_;  // [D]
  std::vector<float> rope_freqs_;   // [rope_dim / 2] divisors of each frequency (Llama 3.1), or empty
  std::vector<Layer> layers_;
  std::vector<float> inv_freq_;     // [rope_dim / 2]
  std::vector<float> alibi_slopes_; // [n_head]

  int n_blocks_ = 0, block_size_ = 0, max_step_tokens_ = 0, max_out_rows_ = 0;
  int key_chunk_ = 1;  // keys per attention softmax chunk (attention.h), fixed at init_cache
  bool cache_ready_ = false;

  // Shared step scratch (every node reads it), for T = max_step_tokens rows:
  std::vector<float> x_;           // [T][D] residual stream
  std::vector<float> xn_;          // [T][D] normed input of qkv / gate_up / output
  std::vector<ActBlock> xq_;       // [T][D / 32] the same, quantized
  std::vector<float> out_rows_;    // [max_out][D] rows whose logits are wanted
  std::vector<float> rope_cs_;     // [T][rope_dim] cos, sin interleaved per frequency
  std::vector<float> logits_pad_;  // [max_out][padded vocab]

  // MoE routing of a step (S = T * n_expert_used rows, grouped by expert):
  std::vector<float> router_logits_;  // [T][padded n_expert]
  std::vector<int> slot_of_;          // [T][k] row of token t's j-th expert in the grouped order
  std::vector<float> slot_weight_;    // [T][k] its renormalised router weight
  std::vector<int> slot_token_;       // [S] token of each grouped row
  std::vector<int> active_;           // [n_active] experts with rows this step, ascending
  std::vector<int> expert_rows_;      // [n_expert + 1] first grouped row of each expert (prefix sums)
  std::vector<int> expert_cursor_;    // [n_expert] next free grouped row of each expert (routing)
  std::vector<float> router_probs_;   // [n_expert] one token's unnormalised softmax (routing)
  std::vector<int> router_order_;     // [n_expert] experts by probability (routing)
  int n_active_ = 0;
  std::atomic<uint64_t> moe_layer_steps_{0}, moe_active_sum_{0};  // moe_counts(); written by the router's thread
  std::vector<ActBlock> moe_xq_;      // [S][D / 32] the FFN input rows, grouped by expert
  std::vector<float> moe_x_;          // [S][D] the same in float, when an expert matrix is a float type
  std::vector<float> moe_act_;        // [S][n_ff] SwiGLU of every node's columns (several nodes only)
};

}  // namespace sysinfer
