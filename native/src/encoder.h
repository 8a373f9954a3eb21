// Encoder models (BERT, XLM-RoBERTa as bge-m3 / bge-reranker-v2-m3 store them: llama.cpp's `bert`
// architecture): token + absolute position + token-type embeddings, LayerNorm with bias, post-norm
// layers (attention, residual, LayerNorm; FFN up, GELU, down, residual, LayerNorm), Q/K/V/output and
// FFN biases, bidirectional attention (no mask, no KV cache), pooling per sequence (mean, first
// token, last token) and the rank head of rerankers (first token -> dense + tanh -> score rows).
//
// One call (Encoder::run) computes a batch of whole sequences laid end to end, on every thread of
// the encoder's pool, and writes one pooled vector (or one score) per sequence. Every buffer is an
// arena sized at reserve(); a call allocates nothing. The weights come from the same description as
// decoders (model_desc.h: roles, types, shapes), packed with the same tiles and multiplied by the
// same kernel table; the encoder-only operations (LayerNorm, bias, GELU, attention over a whole
// sequence) are generic C++ here.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "kernels.h"
#include "model.h"
#include "model_desc.h"
#include "threadpool.h"

namespace sysinfer {

// Throws std::invalid_argument naming what is wrong: sizes, switches an encoder does not have
// (RoPE, causal attention, SwiGLU), a role outside the encoder graph, a missing, doubled or misshapen
// tensor, a vector not in F32, a rank head without pooling rank (or the reverse).
void check_encoder_description(const ModelDesc& d);

// The GELU the encoder runs (erf form, a rational erf): for the test against the exact one.
float encoder_gelu(float x);

struct EncoderLayer {
  MatrixGroup qkv;   // outputs q [nq] at q_off, k [nkv] at k_off, v [nkv] at v_off
  MatrixGroup wo;    // [D] <- [nq]
  MatrixGroup up;    // [F] <- [D]
  MatrixGroup down;  // [D] <- [F]
  int q_off = 0, k_off = 0, v_off = 0;
  // Biases by output column of their group (width of the group; zero where the file has none).
  std::vector<float> qkv_bias, wo_bias, up_bias, down_bias;
  std::vector<float> attn_norm, attn_norm_b, out_norm, out_norm_b;  // [D] post-attention / post-FFN LayerNorms
};

class Encoder {
 public:
  // Checks the description (check_encoder_description); n_threads workers pinned to cpus (or not).
  Encoder(const ModelDesc& desc, int n_threads, const std::vector<int>& cpus);

  // Loading as Model's: data[i] holds the file's bytes of tensor layer_tensors(layer)[i].
  std::vector<int> layer_tensors(int layer) const;
  void load(int layer, const std::vector<const uint8_t*>& data);
  void finish_loading();

  // The call's arenas: at most max_tokens tokens (and so sequences) per run.
  void reserve(int max_tokens);

  // tokens [n_tok] holds n_seq sequences, sequence s at [seq_starts[s], seq_starts[s + 1]) (each 1 to
  // n_ctx tokens). Writes out [n_seq][out_width()]: the pooled vector (L2-normalized if normalize),
  // or for pooling rank the classification head's n_cls_out raw scores. Throws std::invalid_argument
  // on bad input. Safe without the GIL; one call at a time.
  void run(const int32_t* tokens, int n_tok, const int32_t* seq_starts, int n_seq, bool normalize, float* out);

  int out_width() const { return cfg_.pooling == Pooling::Rank ? cfg_.n_cls_out : cfg_.n_embd; }
  const ModelDesc& config() const { return cfg_; }
  const Kernels& kernels() const { return *kernels_; }
  int n_threads() const { return pool_->size(); }
  int max_tokens() const { return max_tokens_; }
  size_t weight_bytes() const { return weight_bytes_; }
  size_t arena_bytes() const { return arena_bytes_; }

 private:
  struct Call {  // one run's inputs
    const int32_t* tokens;
    const int32_t* seq_starts;
    int n_tok, n_seq;
    bool normalize;
    float* out;
  };
  Matrix make_matrix(WType type, int rows, int cols, const uint8_t* data);
  void load_model_wide(const std::vector<int>& index, const std::vector<const uint8_t*>& data);
  void load_group(MatrixGroup& g, const std::vector<const TensorDesc*>& parts, const std::vector<const uint8_t*>& data);
  void forward(int tid, const Call& c);
  void embed_rows(int tid, const Call& c);
  void layer(int tid, int l, const Call& c);
  void matmul(int tid, int op, const MatrixGroup& g, const std::vector<float>& bias, const float* x, const ActBlock* xq,
              int n_rows, float* y, int ldy, int act);
  // Rows quantized for the matrices of `next` (kernels.h's act_group of them to a scale).
  void quantize_rows(int tid, const float* x, int n_rows, int cols, ActBlock* xq, const MatrixGroup& next);
  // next: the matrices that read the result, quantized for them where they take quantized blocks; or null.
  void residual_norm(int tid, const float* y, int ldy, const std::vector<float>& w, const std::vector<float>& b,
                     int n_rows, const MatrixGroup* next);
  void attention(int tid, const Call& c, const EncoderLayer& L);
  void pool(int tid, const Call& c);
  void rank_head(int tid, const Call& c);

  ModelDesc cfg_;
  const Kernels* kernels_;
  std::unique_ptr<ThreadPool> pool_;
  size_t weight_bytes_ = 0, arena_bytes_ = 0;
  std::vector<bool> loaded_;  // [n_layer + 1]: model-wide at 0

  Matrix token_embd_, pos_embd_, type_embd_;  // looked up a row at a time (dequantize_packed_row)
  std::vector<float> embd_norm_, embd_norm_b_;  // [D]
  MatrixGroup cls_, cls_out_;                   // rank head: [D] <- [D], [n_cls_out] <- [D]
  std::vector<float> cls_b_, cls_out_b_;        // by output column (padded widths)
  std::vector<EncoderLayer> layers_;

  int max_tokens_ = 0;
  // [5 * n_layer + 2] next work item of each parallel operation of a run: per layer qkv, attention,
  // wo, up, down; then the rank head's cls and cls.output
  std::unique_ptr<std::atomic<int>[]> next_;
  // Arenas for T = max_tokens rows:
  std::vector<float> x_;        // [T][D] hidden state
  std::vector<float> qkv_;      // [T][qkv width]
  std::vector<float> attn_;     // [T][nq] attention output
  std::vector<float> ff_;       // [T][up width] GELU(up)
  std::vector<float> proj_;     // [T][padded D] output of wo, then of down
  std::vector<ActBlock> xq_;    // [T][max(D, nq, F) / 32] quantized input of the next matmul
  std::vector<float> head_;     // [T][padded D] rank head: pooled rows, then tanh(cls)
  std::vector<float> scores_;   // [T][padded n_cls_out] rank head output
  std::vector<float> scratch_;  // [n_threads][hd * n_ctx + n_ctx] keys transposed, one row's scores
  size_t scratch_per_thread_ = 0;
};

}  // namespace sysinfer
