// A model described as data: every tensor by its role (an enum), type and shape, and the few
// switches of the graph (norm, positions, RoPE style, feed-forward kind). Python builds it from the
// file's metadata (sysinfer/model/architecture.py, description.py) and hands it over whole; the core
// checks it against the hyperparameters and runs the one forward pass it describes. A new
// architecture is a new description plus the graph differences it really has; no names are parsed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels.h"

namespace sysinfer {

// What a tensor is for. Model-wide roles have layer -1; the others belong to one layer.
enum class Role : int {
  // model-wide
  TokenEmbd,     // [n_vocab][D] (GGUF shape (D, n_vocab))
  Output,        // [n_vocab][D]; absent: tied to TokenEmbd
  OutputNorm,    // [D]
  RopeFreqs,     // [rope_dim / 2] divisors of each RoPE frequency (Llama 3.1)
  // attention
  AttnNorm,      // [D]
  AttnQ,         // [n_head * hd][D]
  AttnK,         // [n_head_kv * hd][D]
  AttnV,         // [n_head_kv * hd][D]
  AttnQBias,     // [n_head * hd] (qwen2)
  AttnKBias,     // [n_head_kv * hd]
  AttnVBias,     // [n_head_kv * hd]
  AttnQNorm,     // [hd] RMS norm of each query head before RoPE (qwen3)
  AttnKNorm,     // [hd] the same for each key head
  AttnOut,       // [D][n_head * hd]
  // feed-forward
  FfnNorm,       // [D]
  FfnGate,       // [n_ff][D]
  FfnUp,         // [n_ff][D]
  FfnDown,       // [D][n_ff]
  // Mixture of experts (qwen3moe; described, not run yet): router and 3-D expert tensors.
  FfnRouter,     // [n_expert][D]
  FfnGateExps,   // [n_expert][n_ff][D]
  FfnUpExps,     // [n_expert][n_ff][D]
  FfnDownExps,   // [n_expert][D][n_ff]
  // Encoder parts (BERT family; described, not run yet): absolute positions, LayerNorm biases,
  // projection biases.
  PosEmbd,       // [n_ctx][D]
  TokenTypeEmbd, // [n_types][D]
  EmbdNorm,      // [D]
  EmbdNormBias,  // [D]
  AttnNormBias,  // [D]
  AttnOutBias,   // [D]
  FfnNormBias,   // [D]
  FfnUpBias,     // [n_ff]
  FfnDownBias,   // [D]
  // BERT's post-norm layers (encoder.h): LayerNorm after the attention residual and after the FFN
  // residual; the rank head of rerankers (dense + tanh, then the score row(s)).
  AttnOutNorm,     // [D]
  AttnOutNormBias, // [D]
  LayerOutNorm,    // [D]
  LayerOutNormBias,// [D]
  Cls,           // [D][D]
  ClsBias,       // [D]
  ClsOut,        // [n_cls_out][D]
  ClsOutBias,    // [n_cls_out]
  kCount
};
const char* role_name(Role r);
bool is_model_wide(Role r);  // layer -1 roles

enum class NormKind : int { RMS, Layer };            // RMSNorm; LayerNorm (mean removed, bias) for encoders
enum class Positions : int { Rope, Alibi, Absolute }; // Absolute: PosEmbd added to the embeddings
enum class RopeStyle : int { Pairs, Halves };        // rotate (2i, 2i + 1) (llama); (i, i + rope_dim / 2) (NEOX)
enum class FfnKind : int { SwiGLU, GELU, MoE };      // down(silu(gate) * up); down(gelu(up)); routed SwiGLU experts
// An encoder's output per sequence: none (decoders), the mean of its tokens, its first token, its
// last token, or rank (the first token through the classification head: a score).
enum class Pooling : int { None, Mean, Cls, Last, Rank };

struct TensorDesc {
  Role role = Role::TokenEmbd;
  int layer = -1;               // -1: model-wide
  WType type = WType::F32;
  std::vector<int64_t> shape;   // GGUF order: shape[0] is the row length
  int64_t rows() const;         // product of shape[1:] (1 for a vector)
  int64_t cols() const { return shape.empty() ? 0 : shape[0]; }
  size_t bytes() const;         // in the GGUF file
};

struct ModelDesc {
  std::string arch;
  int n_layer = 0;
  int n_embd = 0;      // hidden size D
  int n_head = 0;      // query heads
  int n_head_kv = 0;   // key/value heads (GQA: n_head % n_head_kv == 0)
  int head_dim = 0;    // per-head size; n_head * head_dim need not equal n_embd
  int n_ff = 0;        // feed-forward size F (of one expert for MoE)
  int n_vocab = 0;
  int n_ctx = 0;       // longest sequence (positions are < n_ctx)
  NormKind norm = NormKind::RMS;
  float norm_eps = 1e-5f;
  Positions positions = Positions::Rope;
  RopeStyle rope_style = RopeStyle::Pairs;
  int rope_dim = 0;    // leading dims of each head that RoPE rotates
  float rope_base = 10000.f;
  // RoPE scaling (YaRN): each frequency multiplied by rope_freq_mul[i] ([rope_dim / 2], or empty: none)
  // and cos / sin by rope_mscale (the attention's magnitude correction). Python computes both from
  // the file's rope.scaling keys (sysinfer/model/rope_scaling.py).
  std::vector<float> rope_freq_mul;
  float rope_mscale = 1.f;
  float alibi_max_bias = 8.f;
  bool causal = true;  // false: every token sees the whole sequence (encoders)
  FfnKind ffn = FfnKind::SwiGLU;
  int n_expert = 0, n_expert_used = 0;
  int n_token_types = 2;  // rows of TokenTypeEmbd (encoders)
  int n_cls_out = 1;      // rows of ClsOut (rerankers' scores; the first is the relevance score)
  Pooling pooling = Pooling::None;
  std::vector<TensorDesc> tensors;  // model-wide ones and every layer's, any order
};

// The shape (GGUF order) a tensor of role r must have in model d.
std::vector<int64_t> expected_shape(const ModelDesc& d, Role r);

// Throws std::invalid_argument naming what is wrong: sizes, a role this forward pass does not run
// (yet), a missing required tensor, a tensor twice, a wrong shape, a vector not in F32.
void check_description(const ModelDesc& d);

// Whether layer l (or the model, l = -1) has a tensor of role r.
bool has_tensor(const ModelDesc& d, int layer, Role r);

}  // namespace sysinfer
