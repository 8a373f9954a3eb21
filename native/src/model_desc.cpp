#include "model_desc.h"

#include <set>
#include <stdexcept>
#include <iterator>
#include <utility>

namespace sysinfer {

namespace {

[[noreturn]] void bad(const std::string& what) { throw std::invalid_argument("model description: " + what); }

constexpr const char* kRoleNames[] = {
    "token_embd", "output", "output_norm", "rope_freqs", "attn_norm", "attn_q", "attn_k", "attn_v",
    "attn_q.bias", "attn_k.bias", "attn_v.bias", "attn_q_norm", "attn_k_norm", "attn_output", "ffn_norm",
    "ffn_gate", "ffn_up", "ffn_down", "ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps",
    "position_embd", "token_types", "token_embd_norm", "token_embd_norm.bias", "attn_norm.bias",
    "attn_output.bias", "ffn_norm.bias", "ffn_up.bias", "ffn_down.bias", "attn_output_norm",
    "attn_output_norm.bias", "layer_output_norm", "layer_output_norm.bias", "cls", "cls.bias", "cls.output",
    "cls.output.bias"};
static_assert(sizeof(kRoleNames) / sizeof(kRoleNames[0]) == size_t(Role::kCount), "a name per role");

bool model_wide(Role r) {
  return r == Role::TokenEmbd || r == Role::Output || r == Role::OutputNorm || r == Role::RopeFreqs ||
         r == Role::PosEmbd || r == Role::TokenTypeEmbd || r == Role::EmbdNorm || r == Role::EmbdNormBias ||
         r == Role::Cls || r == Role::ClsBias || r == Role::ClsOut || r == Role::ClsOutBias;
}

// Roles the forward pass runs today; the others are described so that their architectures fit,
// and refused until their graph exists (encoders: issue 26).
bool runnable(Role r) { return int(r) <= int(Role::FfnDownExps); }

bool dense_ffn(Role r) { return r == Role::FfnGate || r == Role::FfnUp || r == Role::FfnDown; }
bool expert_ffn(Role r) { return int(r) >= int(Role::FfnRouter) && int(r) <= int(Role::FfnDownExps); }

const Role kRequiredModel[] = {Role::TokenEmbd, Role::OutputNorm};
const Role kRequiredLayer[] = {Role::AttnNorm, Role::AttnQ, Role::AttnK, Role::AttnV, Role::AttnOut, Role::FfnNorm};
const Role kRequiredDense[] = {Role::FfnGate, Role::FfnUp, Role::FfnDown};
const Role kRequiredMoE[] = {Role::FfnRouter, Role::FfnGateExps, Role::FfnUpExps, Role::FfnDownExps};

std::string shape_text(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

}  // namespace

bool is_model_wide(Role r) { return model_wide(r); }

const char* role_name(Role r) { return int(r) >= 0 && r < Role::kCount ? kRoleNames[int(r)] : "?"; }

int64_t TensorDesc::rows() const {
  int64_t n = 1;
  for (size_t i = 1; i < shape.size(); ++i) n *= shape[i];
  return n;
}

size_t TensorDesc::bytes() const { return gguf_row_bytes(type, int(cols())) * size_t(rows()); }

std::vector<int64_t> expected_shape(const ModelDesc& d, Role r) {
  const int64_t D = d.n_embd, F = d.n_ff, hd = d.head_dim, V = d.n_vocab, E = d.n_expert;
  const int64_t nq = int64_t(d.n_head) * hd, nkv = int64_t(d.n_head_kv) * hd;
  switch (r) {
    case Role::TokenEmbd: case Role::Output: return {D, V};
    case Role::RopeFreqs: return {d.rope_dim / 2};
    case Role::AttnQ: return {D, nq};
    case Role::AttnK: case Role::AttnV: return {D, nkv};
    case Role::AttnQBias: return {nq};
    case Role::AttnKBias: case Role::AttnVBias: return {nkv};
    case Role::AttnQNorm: case Role::AttnKNorm: return {hd};
    case Role::AttnOut: return {nq, D};
    case Role::FfnGate: case Role::FfnUp: return {D, F};
    case Role::FfnDown: return {F, D};
    case Role::FfnRouter: return {D, E};
    case Role::FfnGateExps: case Role::FfnUpExps: return {D, F, E};
    case Role::FfnDownExps: return {F, D, E};
    case Role::PosEmbd: return {D, d.n_ctx};
    case Role::TokenTypeEmbd: return {D, d.n_token_types};
    case Role::FfnUpBias: return {F};
    case Role::Cls: return {D, D};
    case Role::ClsOut: return {D, d.n_cls_out};
    case Role::ClsOutBias: return {d.n_cls_out};
    default: return {D};  // the norms and the D-wide biases
  }
}

bool has_tensor(const ModelDesc& d, int layer, Role r) {
  for (const TensorDesc& t : d.tensors)
    if (t.layer == layer && t.role == r) return true;
  return false;
}

void check_description(const ModelDesc& d) {
  if (d.n_layer <= 0 || d.n_embd <= 0 || d.n_head <= 0 || d.n_head_kv <= 0 || d.head_dim <= 0 || d.n_ff <= 0 ||
      d.n_vocab <= 0 || d.n_ctx <= 0)
    bad("every size must be positive");
  if (d.n_head % d.n_head_kv != 0) bad("n_head must be a multiple of n_head_kv");
  if (d.positions == Positions::Rope && (d.rope_dim <= 0 || d.rope_dim > d.head_dim || d.rope_dim % 2))
    bad("rope_dim must be even and at most head_dim");
  if (d.norm != NormKind::RMS || d.positions == Positions::Absolute || !d.causal || d.ffn == FfnKind::GELU)
    bad(d.arch + ": LayerNorm, absolute positions, bidirectional attention and GELU feed-forward are not "
        "run by this forward pass yet");
  if (!d.rope_freq_mul.empty() && int(d.rope_freq_mul.size()) != d.rope_dim / 2)
    bad("rope_freq_mul must hold rope_dim / 2 multipliers or none");
  for (float m : d.rope_freq_mul)
    if (!(m > 0.f && m < 1e30f)) bad("rope_freq_mul must be positive and finite");
  if (!(d.rope_mscale > 0.f && d.rope_mscale < 1e30f)) bad("rope_mscale must be positive and finite");
  const bool moe = d.ffn == FfnKind::MoE;
  if (moe && !(d.n_expert > 0 && d.n_expert_used > 0 && d.n_expert_used <= d.n_expert))
    bad("a mixture of experts needs 0 < n_expert_used <= n_expert (got " + std::to_string(d.n_expert_used) +
        " of " + std::to_string(d.n_expert) + ")");
  std::set<std::pair<int, int>> seen;  // (layer, role)
  for (const TensorDesc& t : d.tensors) {
    const std::string at = (t.layer < 0 ? std::string() : "blk." + std::to_string(t.layer) + ".") + role_name(t.role);
    if (int(t.role) < 0 || t.role >= Role::kCount) bad("unknown role " + std::to_string(int(t.role)));
    if (!runnable(t.role)) bad(at + ": " + d.arch + "'s " + role_name(t.role) + " tensors are not run by this forward pass yet");
    if ((moe && dense_ffn(t.role)) || (!moe && expert_ffn(t.role)))
      bad(at + ": a " + (moe ? "mixture-of-experts" : "dense") + " feed-forward has no such tensor");
    if (model_wide(t.role) != (t.layer < 0) || t.layer >= d.n_layer) bad(at + ": wrong layer " + std::to_string(t.layer));
    if (!seen.insert({t.layer, int(t.role)}).second) bad(at + " given twice");
    const std::vector<int64_t> want = expected_shape(d, t.role);
    if (t.shape != want) bad(at + " has shape " + shape_text(t.shape) + ", expected " + shape_text(want));
    if (t.shape.size() == 1 && t.type != WType::F32) bad(at + ": vectors must be F32");
    if (t.role == Role::RopeFreqs && d.positions != Positions::Rope) bad(at + " without RoPE");
  }
  for (Role r : kRequiredModel)
    if (!seen.count({-1, int(r)})) bad(std::string("missing ") + role_name(r));
  for (int l = 0; l < d.n_layer; ++l) {
    for (Role r : kRequiredLayer)
      if (!seen.count({l, int(r)})) bad("missing blk." + std::to_string(l) + "." + role_name(r));
    for (Role r : moe ? std::vector<Role>(std::begin(kRequiredMoE), std::end(kRequiredMoE))
                      : std::vector<Role>(std::begin(kRequiredDense), std::end(kRequiredDense)))
      if (!seen.count({l, int(r)})) bad("missing blk." + std::to_string(l) + "." + role_name(r));
  }
}

}  // namespace sysinfer
