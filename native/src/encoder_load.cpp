// Encoders: the description check, loading (each tensor packed where its role says) and the arenas.
#include <algorithm>
#include <cstring>
#include <set>
#include <stdexcept>
#include <string>

#include "encoder.h"
#include "model_internal.h"
#include "numa.h"

namespace sysinfer {

namespace {

[[noreturn]] void bad(const std::string& what) { throw std::invalid_argument("encoder description: " + what); }

// The roles of the encoder graph (encoder.h); any other role in an encoder's description is refused.
const Role kModelRoles[] = {Role::TokenEmbd, Role::PosEmbd, Role::TokenTypeEmbd, Role::EmbdNorm, Role::EmbdNormBias,
                            Role::Cls, Role::ClsBias, Role::ClsOut, Role::ClsOutBias};
const Role kLayerRoles[] = {Role::AttnQ, Role::AttnK, Role::AttnV, Role::AttnQBias, Role::AttnKBias, Role::AttnVBias,
                            Role::AttnOut, Role::AttnOutBias, Role::AttnOutNorm, Role::AttnOutNormBias, Role::FfnUp,
                            Role::FfnUpBias, Role::FfnDown, Role::FfnDownBias, Role::LayerOutNorm, Role::LayerOutNormBias};
const Role kRequiredModel[] = {Role::TokenEmbd, Role::PosEmbd, Role::EmbdNorm, Role::EmbdNormBias};
const Role kRequiredLayer[] = {Role::AttnQ, Role::AttnK, Role::AttnV, Role::AttnOut, Role::AttnOutNorm,
                               Role::AttnOutNormBias, Role::FfnUp, Role::FfnDown, Role::LayerOutNorm,
                               Role::LayerOutNormBias};

template <size_t N>
bool in(const Role (&set)[N], Role r) { return std::find(set, set + N, r) != set + N; }

std::string at_name(const TensorDesc& t) {
  return (t.layer < 0 ? std::string() : "blk." + std::to_string(t.layer) + ".") + role_name(t.role);
}

// Output-column vector of a group: part i's values at the group's offset i (zeros elsewhere).
void place(std::vector<float>& into, int width, int offset, const float* v, int n) {
  if (into.empty()) into.assign(size_t(width), 0.f);
  std::copy(v, v + n, into.begin() + offset);
}

}  // namespace

void check_encoder_description(const ModelDesc& d) {
  if (d.n_layer <= 0 || d.n_embd <= 0 || d.n_head <= 0 || d.n_head_kv <= 0 || d.head_dim <= 0 || d.n_ff <= 0 ||
      d.n_vocab <= 0 || d.n_ctx <= 0 || d.n_token_types <= 0 || d.n_cls_out <= 0)
    bad("every size must be positive");
  if (d.n_head % d.n_head_kv) bad("n_head must be a multiple of n_head_kv");
  if (d.norm != NormKind::Layer || d.positions != Positions::Absolute || d.causal || d.ffn != FfnKind::GELU)
    bad(d.arch + ": an encoder has LayerNorm, absolute positions, bidirectional attention and a GELU feed-forward");
  if (d.pooling == Pooling::None) bad("an encoder needs a pooling (mean, cls, last or rank)");
  if (!(d.norm_eps > 0.f && d.norm_eps < 1.f)) bad("norm_eps must be in (0, 1)");
  std::set<std::pair<int, int>> seen;
  for (const TensorDesc& t : d.tensors) {
    if (int(t.role) < 0 || t.role >= Role::kCount) bad("unknown role " + std::to_string(int(t.role)));
    const std::string at = at_name(t);
    const bool wide = is_model_wide(t.role);
    if (!(wide ? in(kModelRoles, t.role) : in(kLayerRoles, t.role)))
      bad(at + ": " + role_name(t.role) + " tensors are not part of an encoder");
    if (wide != (t.layer < 0) || t.layer >= d.n_layer) bad(at + ": wrong layer " + std::to_string(t.layer));
    if (!seen.insert({t.layer, int(t.role)}).second) bad(at + " given twice");
    const std::vector<int64_t> want = expected_shape(d, t.role);
    if (t.shape != want) {
      std::string s = "[", w = "[";
      for (size_t i = 0; i < t.shape.size(); ++i) s += (i ? ", " : "") + std::to_string(t.shape[i]);
      for (size_t i = 0; i < want.size(); ++i) w += (i ? ", " : "") + std::to_string(want[i]);
      bad(at + " has shape " + s + "], expected " + w + "]");
    }
    if (t.shape.size() == 1 && t.type != WType::F32) bad(at + ": vectors must be F32");
  }
  for (Role r : kRequiredModel)
    if (!seen.count({-1, int(r)})) bad(std::string("missing ") + role_name(r));
  for (int l = 0; l < d.n_layer; ++l)
    for (Role r : kRequiredLayer)
      if (!seen.count({l, int(r)})) bad("missing blk." + std::to_string(l) + "." + role_name(r));
  const bool head = seen.count({-1, int(Role::ClsOut)}) > 0;
  if (head != (d.pooling == Pooling::Rank))
    bad(head ? "a classification head (cls.output) needs pooling rank" : "pooling rank needs a classification head (cls.output)");
  if (seen.count({-1, int(Role::ClsBias)}) && !seen.count({-1, int(Role::Cls)})) bad("cls.bias without cls");
  if (seen.count({-1, int(Role::ClsOutBias)}) && !head) bad("cls.output.bias without cls.output");
  const int64_t nq = int64_t(d.n_head) * d.head_dim, nkv = int64_t(d.n_head_kv) * d.head_dim;
  if (d.n_embd % QK || nq % QK || nkv % ROW_TILE || d.n_ff % QK)
    bad("hidden, attention and feed-forward sizes must be multiples of 32 (key/value: of 8)");
}

Encoder::Encoder(const ModelDesc& desc, int n_threads, const std::vector<int>& cpus) : cfg_(desc) {
  check_encoder_description(cfg_);
  if (n_threads <= 0 || n_threads > 1024) bad_input("encoder: thread count must be in 1..1024");
  kernels_ = &select_kernels();
  pool_ = std::make_unique<ThreadPool>(n_threads, cpus);
  layers_.resize(size_t(cfg_.n_layer));
  loaded_.assign(size_t(cfg_.n_layer) + 1, false);
}

// pack_new_matrix model-wide (encoders are not split over nodes), its bytes counted.
Matrix Encoder::make_matrix(WType type, int rows, int cols, const uint8_t* data) {
  Matrix m = pack_new_matrix(type, rows, cols, data, -1);
  weight_bytes_ += m.bytes();
  return m;
}

std::vector<int> Encoder::layer_tensors(int layer) const {
  std::vector<int> out;
  for (size_t i = 0; i < cfg_.tensors.size(); ++i)
    if (cfg_.tensors[i].layer == layer) out.push_back(int(i));
  return out;
}

// One packed matrix when the parts share a type and all but the last fill whole tiles, else one each.
void Encoder::load_group(MatrixGroup& g, const std::vector<const TensorDesc*>& parts,
                         const std::vector<const uint8_t*>& data) {
  if (!fusable(parts)) {
    for (size_t i = 0; i < parts.size(); ++i)
      g.add(make_matrix(parts[i]->type, int(parts[i]->rows()), int(parts[i]->cols()), data[i]));
    return;
  }
  std::vector<uint8_t> joined;  // [rows][row bytes]: the parts' rows one after another
  int rows = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    joined.insert(joined.end(), data[i], data[i] + parts[i]->bytes());
    rows += int(parts[i]->rows());
  }
  g.add(make_matrix(parts[0]->type, rows, int(parts[0]->cols()), joined.data()));
}

void Encoder::load(int layer, const std::vector<const uint8_t*>& data) {
  if (layer < -1 || layer >= cfg_.n_layer) bad_input("load: no layer " + std::to_string(layer));
  if (loaded_[size_t(layer + 1)]) bad_input("load: layer " + std::to_string(layer) + " loaded twice");
  const std::vector<int> index = layer_tensors(layer);
  if (data.size() != index.size()) bad_input("load: layer " + std::to_string(layer) + ": wrong tensor count");
  loaded_[size_t(layer + 1)] = true;
  if (layer < 0) {
    load_model_wide(index, data);
    return;
  }
  EncoderLayer& L = layers_[size_t(layer)];
  const TensorDesc* qkv[3] = {};
  const uint8_t* qkv_data[3] = {};
  const float* qkv_bias[3] = {};
  const float *wo_b = nullptr, *up_b = nullptr, *down_b = nullptr;
  for (size_t i = 0; i < index.size(); ++i) {
    const TensorDesc& t = cfg_.tensors[size_t(index[i])];
    const float* f = reinterpret_cast<const float*>(data[i]);
    auto vec = [&] { return std::vector<float>(f, f + t.cols()); };
    switch (t.role) {
      case Role::AttnQ: qkv[0] = &t; qkv_data[0] = data[i]; break;
      case Role::AttnK: qkv[1] = &t; qkv_data[1] = data[i]; break;
      case Role::AttnV: qkv[2] = &t; qkv_data[2] = data[i]; break;
      case Role::AttnQBias: qkv_bias[0] = f; break;
      case Role::AttnKBias: qkv_bias[1] = f; break;
      case Role::AttnVBias: qkv_bias[2] = f; break;
      case Role::AttnOut: L.wo.add(make_matrix(t.type, int(t.rows()), int(t.cols()), data[i])); break;
      case Role::AttnOutBias: wo_b = f; break;
      case Role::FfnUp: L.up.add(make_matrix(t.type, int(t.rows()), int(t.cols()), data[i])); break;
      case Role::FfnUpBias: up_b = f; break;
      case Role::FfnDown: L.down.add(make_matrix(t.type, int(t.rows()), int(t.cols()), data[i])); break;
      case Role::FfnDownBias: down_b = f; break;
      case Role::AttnOutNorm: L.attn_norm = vec(); break;
      case Role::AttnOutNormBias: L.attn_norm_b = vec(); break;
      case Role::LayerOutNorm: L.out_norm = vec(); break;
      case Role::LayerOutNormBias: L.out_norm_b = vec(); break;
      default: bad_input(std::string("load: ") + role_name(t.role) + " is not part of an encoder layer");
    }
  }
  load_group(L.qkv, {qkv[0], qkv[1], qkv[2]}, {qkv_data[0], qkv_data[1], qkv_data[2]});
  // Where q, k and v land in the group's output (fused: one after another; else at each part's offset).
  const int nq = cfg_.n_head * cfg_.head_dim, nkv = cfg_.n_head_kv * cfg_.head_dim;
  if (L.qkv.parts.size() == 1) {
    L.q_off = 0, L.k_off = nq, L.v_off = nq + nkv;
  } else {
    L.q_off = L.qkv.offsets[0], L.k_off = L.qkv.offsets[1], L.v_off = L.qkv.offsets[2];
  }
  const int offs[3] = {L.q_off, L.k_off, L.v_off}, sizes[3] = {nq, nkv, nkv};
  L.qkv_bias.assign(size_t(L.qkv.width), 0.f);
  for (int i = 0; i < 3; ++i)
    if (qkv_bias[i]) place(L.qkv_bias, L.qkv.width, offs[i], qkv_bias[i], sizes[i]);
  L.wo_bias.assign(size_t(L.wo.width), 0.f);
  L.up_bias.assign(size_t(L.up.width), 0.f);
  L.down_bias.assign(size_t(L.down.width), 0.f);
  if (wo_b) place(L.wo_bias, L.wo.width, 0, wo_b, cfg_.n_embd);
  if (up_b) place(L.up_bias, L.up.width, 0, up_b, cfg_.n_ff);
  if (down_b) place(L.down_bias, L.down.width, 0, down_b, cfg_.n_embd);
}

void Encoder::load_model_wide(const std::vector<int>& index, const std::vector<const uint8_t*>& data) {
  const float *cls_b = nullptr, *cls_out_b = nullptr;
  for (size_t i = 0; i < index.size(); ++i) {
    const TensorDesc& t = cfg_.tensors[size_t(index[i])];
    const float* f = reinterpret_cast<const float*>(data[i]);
    switch (t.role) {
      case Role::TokenEmbd: token_embd_ = make_matrix(t.type, int(t.rows()), int(t.cols()), data[i]); break;
      case Role::PosEmbd: pos_embd_ = make_matrix(t.type, int(t.rows()), int(t.cols()), data[i]); break;
      case Role::TokenTypeEmbd: type_embd_ = make_matrix(t.type, int(t.rows()), int(t.cols()), data[i]); break;
      case Role::EmbdNorm: embd_norm_.assign(f, f + t.cols()); break;
      case Role::EmbdNormBias: embd_norm_b_.assign(f, f + t.cols()); break;
      case Role::Cls: cls_.add(make_matrix(t.type, int(t.rows()), int(t.cols()), data[i])); break;
      case Role::ClsBias: cls_b = f; break;
      case Role::ClsOut: cls_out_.add(make_matrix(t.type, int(t.rows()), int(t.cols()), data[i])); break;
      case Role::ClsOutBias: cls_out_b = f; break;
      default: bad_input(std::string("load: ") + role_name(t.role) + " is not part of an encoder");
    }
  }
  cls_b_.assign(size_t(cls_.width), 0.f);
  cls_out_b_.assign(size_t(cls_out_.width), 0.f);
  if (cls_b) place(cls_b_, cls_.width, 0, cls_b, cfg_.n_embd);
  if (cls_out_b) place(cls_out_b_, cls_out_.width, 0, cls_out_b, cfg_.n_cls_out);
}

void Encoder::finish_loading() {
  for (size_t i = 0; i < loaded_.size(); ++i)
    if (!loaded_[i]) bad_input(i == 0 ? std::string("model-wide tensors not loaded") : "layer " + std::to_string(i - 1) + " not loaded");
}

void Encoder::reserve(int max_tokens) {
  if (max_tokens <= 0 || max_tokens > (1 << 24)) bad_input("reserve: max_tokens must be in 1..2^24");
  const size_t T = size_t(max_tokens), D = size_t(cfg_.n_embd), hd = size_t(cfg_.head_dim);
  const size_t nq = size_t(cfg_.n_head) * hd;
  size_t qkv_w = 0, up_w = 0, proj_w = size_t(padded_rows(cfg_.n_embd));
  for (const EncoderLayer& L : layers_) {
    qkv_w = std::max(qkv_w, size_t(L.qkv.width));
    up_w = std::max(up_w, size_t(L.up.width));
  }
  const size_t widest = std::max({D, nq, size_t(cfg_.n_ff)});
  max_tokens_ = max_tokens;
  x_.assign(T * D, 0.f);
  qkv_.assign(T * qkv_w, 0.f);
  attn_.assign(T * nq, 0.f);
  ff_.assign(T * up_w, 0.f);
  proj_.assign(T * proj_w, 0.f);
  xq_.assign(T * widest / QK, ActBlock{});
  head_.assign(cfg_.pooling == Pooling::Rank ? T * proj_w : 0, 0.f);
  scores_.assign(cfg_.pooling == Pooling::Rank ? T * size_t(std::max(cls_out_.width, 1)) : 0, 0.f);
  const size_t ctx = size_t(std::min(cfg_.n_ctx, max_tokens));
  // attention (encoder_forward.cpp): scores [kQueryTile = 32][ctx], a float row [ctx], fp16 keys and
  // values [hd][ctx] each (in floats: hd * ctx); 64 floats of slack to align; at least an embedding row
  scratch_per_thread_ = std::max(32 * ctx + ctx + hd * ctx + 64, D);
  scratch_.assign(scratch_per_thread_ * size_t(pool_->size()), 0.f);
  next_ = std::make_unique<std::atomic<int>[]>(size_t(5 * cfg_.n_layer + 2));
  arena_bytes_ = (x_.size() + qkv_.size() + attn_.size() + ff_.size() + proj_.size() + head_.size() + scores_.size() +
                  scratch_.size()) * sizeof(float) + xq_.size() * sizeof(ActBlock);
}

}  // namespace sysinfer
