// Loading and packing: each tensor of the description goes to its place (its role says where),
// every node packing its own slice of each matrix into its own memory (kernels.h's tiles).
#include <algorithm>
#include <cstring>

#include "attention.h"
#include "model.h"
#include "model_internal.h"

namespace sysinfer {

void MatrixGroup::add(Matrix m) {
  offsets.push_back(width);
  width += padded_rows(m.rows);
  tiles += m.tiles();
  parts.push_back(std::move(m));
}

bool MatrixGroup::any_quantized() const {
  return std::any_of(parts.begin(), parts.end(), [](const Matrix& m) { return m.quantized(); });
}

int MatrixGroup::act_group() const {
  int g = 1;
  for (const Matrix& m : parts) g = std::max(g, sysinfer::act_group(m.type));
  return g;
}

bool MatrixGroup::any_float() const {
  return std::any_of(parts.begin(), parts.end(), [](const Matrix& m) { return !m.quantized(); });
}

Matrix pack_new_matrix(WType type, int rows, int cols, const uint8_t* gguf_data, int mem_node, BindStatus* bind) {
  if (rows <= 0 || cols <= 0) bad_input("matrix with an empty dimension");
  if (cols % block_size_of(type) || cols % QK)
    bad_input("matrix columns must be a multiple of 32 and of the type's block size");
  Matrix m;
  m.type = type;
  m.rows = rows;
  m.cols = cols;
  m.data = node_array<uint8_t>(m.bytes(), mem_node, bind);
  pack_matrix(type, gguf_data, rows, cols, m.data.get());
  return m;
}

bool fusable(const std::vector<const TensorDesc*>& parts) {
  bool fuse = parts.size() > 1;
  for (size_t i = 0; i < parts.size(); ++i)
    fuse = fuse && parts[i]->type == parts[0]->type && (i + 1 == parts.size() || parts[i]->rows() % ROW_TILE == 0);
  return fuse;
}

// pack_new_matrix in the owner node's memory (nullptr: model-wide), its bytes counted for the model
// and the node.
Matrix Model::make_matrix(WType type, int rows, int cols, const uint8_t* gguf_data, Node* owner) {
  BindStatus st = BindStatus::kNotAsked;
  Matrix m = pack_new_matrix(type, rows, cols, gguf_data, owner ? owner->spec.mem_node : -1, &st);
  weight_bytes_ += m.bytes();
  if (owner) {
    owner->weight_bytes += m.bytes();
    owner->bind = std::max(owner->bind, st);
  }
  return m;
}

// One part of a layer's matrix group, as the file has it (rows x cols, GGUF layout): every node
// packs its own slice into its own memory. Row groups (qkv, gate_up) give each node the rows of its
// heads / FFN columns; column groups (wo, down) give each node its columns of every row.
void Model::add_layer_matrix(int layer, int group, WType type, int rows, int cols, const uint8_t* data) {
  const int hd = cfg_.head_dim, F = cfg_.n_ff, nq = cfg_.n_head * hd, nkv = cfg_.n_head_kv * hd;
  const size_t row_bytes = gguf_row_bytes(type, cols);
  const int r0 = layers_[layer].rows_seen[group], r1 = r0 + rows;
  layers_[layer].rows_seen[group] = r1;
  const std::string at = "blk." + std::to_string(layer) + (group == kQKV ? ".qkv" : group == kWO ? ".wo"
                         : group == kGateUp ? ".gate_up" : ".down");
  std::vector<uint8_t> gathered;
  for (size_t ni = 0; ni < nodes_.size(); ++ni) {
    Node& n = nodes_[ni];
    NodeLayer& L = n.layers[layer];
    if (group == kWO || group == kDown) {
      const int c0 = group == kWO ? n.head0 * hd : n.ff0;
      const int nc = group == kWO ? n.nh * hd : n.nf;
      if (nc == 0) continue;
      const int be = block_size_of(type);
      if (c0 % be || (nc % be && c0 + nc != cols) || nc % QK)
        bad_input(at + ": node " + std::to_string(ni) + "'s columns do not fall on whole blocks of the "
                  "matrix's type; use another node count or --numa off");
      const uint8_t* src = data;
      if (nc != cols) {  // this node's columns of every row, side by side
        const size_t off = gguf_row_bytes(type, c0), len = gguf_row_bytes(type, nc);
        gathered.resize(len * rows);
        for (int r = 0; r < rows; ++r) std::memcpy(gathered.data() + len * r, data + row_bytes * r + off, len);
        src = gathered.data();
      }
      (group == kWO ? L.wo : L.down).add(make_matrix(type, rows, nc, src, &n));
      continue;
    }
    // Row groups: the node's segments of the group's logical rows, and where each one lands.
    struct Segment { int begin, end; int* offset; };
    int gate_off = -1;  // always 0: gate rows come first
    Segment segs[3];
    int n_segs = 0;
    if (group == kQKV) {
      segs[n_segs++] = {n.head0 * hd, (n.head0 + n.nh) * hd, &L.q_off};
      segs[n_segs++] = {nq + n.kv0 * hd, nq + (n.kv0 + n.nkv) * hd, &L.k_off};
      segs[n_segs++] = {nq + nkv + n.kv0 * hd, nq + nkv + (n.kv0 + n.nkv) * hd, &L.v_off};
    } else {
      segs[n_segs++] = {n.ff0, n.ff0 + n.nf, &gate_off};
      segs[n_segs++] = {F + n.ff0, F + n.ff0 + n.nf, &L.up_off};
    }
    MatrixGroup& g = group == kQKV ? L.qkv : L.gate_up;
    int n_rows = 0, first = -1, ranges = 0;
    for (int i = 0; i < n_segs; ++i) {
      const int lo = std::max(segs[i].begin, r0), hi = std::min(segs[i].end, r1);
      if (lo >= hi) continue;
      if (lo != segs[i].begin || hi != segs[i].end)
        bad_input(at + ": a head or FFN slice of node " + std::to_string(ni) + " spans two parts of the group");
      *segs[i].offset = g.width + n_rows;
      if (first < 0) first = lo;
      n_rows += hi - lo;
      ++ranges;
    }
    if (n_rows == 0) continue;
    const uint8_t* src = data + size_t(first - r0) * row_bytes;
    if (ranges > 1) {  // gather the segments' rows into one matrix
      gathered.resize(row_bytes * n_rows);
      size_t at_row = 0;
      for (int i = 0; i < n_segs; ++i) {
        const int lo = std::max(segs[i].begin, r0), hi = std::min(segs[i].end, r1);
        if (lo >= hi) continue;
        std::memcpy(gathered.data() + at_row * row_bytes, data + size_t(lo - r0) * row_bytes, size_t(hi - lo) * row_bytes);
        at_row += hi - lo;
      }
      src = gathered.data();
    }
    g.add(make_matrix(type, n_rows, cols, src, &n));
  }
}

std::vector<int> Model::layer_tensors(int layer) const {
  std::vector<int> out;
  for (size_t i = 0; i < cfg_.tensors.size(); ++i)
    if (cfg_.tensors[i].layer == layer) out.push_back(int(i));
  return out;
}

void Model::load(int layer, const std::vector<const uint8_t*>& data) {
  if (layer < -1 || layer >= cfg_.n_layer) bad_input("load: no layer " + std::to_string(layer));
  if (loaded_[layer + 1]) bad_input("load: layer " + std::to_string(layer) + " loaded twice");
  const std::vector<int> index = layer_tensors(layer);
  if (data.size() != index.size())
    bad_input("load: layer " + std::to_string(layer) + " has " + std::to_string(index.size()) + " tensors, got " +
              std::to_string(data.size()));
  loaded_[layer + 1] = true;
  if (layer < 0) {
    load_model_wide(index, data);
    return;
  }
  // Matrices go to their group in a fixed order (q, k, v; gate, up), whatever the description's.
  Layer& L = layers_[layer];
  const TensorDesc* parts[kGroups][3] = {};
  const uint8_t* bytes[kGroups][3] = {};
  const TensorDesc* experts[4] = {};  // router, gate_exps, up_exps, down_exps
  const uint8_t* expert_bytes[4] = {};
  auto vec = [](const uint8_t* p, const TensorDesc& t) {
    const float* f = reinterpret_cast<const float*>(p);
    return std::vector<float>(f, f + t.cols());
  };
  for (size_t i = 0; i < index.size(); ++i) {
    const TensorDesc& t = cfg_.tensors[index[i]];
    auto put = [&](int group, int slot) { parts[group][slot] = &t; bytes[group][slot] = data[i]; };
    switch (t.role) {
      case Role::AttnNorm: L.attn_norm = vec(data[i], t); break;
      case Role::FfnNorm: L.ffn_norm = vec(data[i], t); break;
      case Role::AttnQBias: L.q_bias = vec(data[i], t); break;
      case Role::AttnKBias: L.k_bias = vec(data[i], t); break;
      case Role::AttnVBias: L.v_bias = vec(data[i], t); break;
      case Role::AttnQNorm: L.q_norm = vec(data[i], t); break;
      case Role::AttnKNorm: L.k_norm = vec(data[i], t); break;
      case Role::AttnQ: put(kQKV, 0); break;
      case Role::AttnK: put(kQKV, 1); break;
      case Role::AttnV: put(kQKV, 2); break;
      case Role::AttnOut: put(kWO, 0); break;
      case Role::FfnGate: put(kGateUp, 0); break;
      case Role::FfnUp: put(kGateUp, 1); break;
      case Role::FfnDown: put(kDown, 0); break;
      case Role::FfnRouter: case Role::FfnGateExps: case Role::FfnUpExps: case Role::FfnDownExps: {
        const int k = int(t.role) - int(Role::FfnRouter);
        experts[k] = &t;
        expert_bytes[k] = data[i];
        break;
      }
      default: bad_input(std::string("load: ") + role_name(t.role) + " is not run by this forward pass");
    }
  }
  if (cfg_.ffn == FfnKind::MoE) load_experts(layer, experts, expert_bytes);
  for (int g = 0; g < kGroups; ++g) {
    std::vector<const TensorDesc*> p;
    std::vector<const uint8_t*> d;
    for (int s = 0; s < 3; ++s)
      if (parts[g][s]) {
        p.push_back(parts[g][s]);
        d.push_back(bytes[g][s]);
      }
    load_group(layer, g, p, d);
  }
}

// One packed matrix when the parts share a type and every part but the last fills whole tiles
// (fused Q/K/V, gate/up: one pass over the input, fewer tiles at the seams), else one per part.
void Model::load_group(int layer, int group, const std::vector<const TensorDesc*>& parts,
                       const std::vector<const uint8_t*>& data) {
  if (!fusable(parts)) {
    for (size_t i = 0; i < parts.size(); ++i)
      add_layer_matrix(layer, group, parts[i]->type, int(parts[i]->rows()), int(parts[i]->cols()), data[i]);
    return;
  }
  size_t total = 0;
  int rows = 0;
  for (const TensorDesc* t : parts) {
    total += t->bytes();
    rows += int(t->rows());
  }
  std::vector<uint8_t> joined(total);  // [rows][row bytes]: the parts' rows one after another
  size_t at = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    std::memcpy(joined.data() + at, data[i], parts[i]->bytes());
    at += parts[i]->bytes();
  }
  add_layer_matrix(layer, group, parts[0]->type, rows, int(parts[0]->cols()), joined.data());
}

void Model::load_model_wide(const std::vector<int>& index, const std::vector<const uint8_t*>& data) {
  for (size_t i = 0; i < index.size(); ++i) {
    const TensorDesc& t = cfg_.tensors[index[i]];
    const float* f = reinterpret_cast<const float*>(data[i]);
    switch (t.role) {
      case Role::TokenEmbd:
        token_embd_ = make_matrix(t.type, int(t.rows()), int(t.cols()), data[i], nullptr);
        break;
      case Role::Output: {  // each node packs its vocabulary rows
        const size_t row_bytes = gguf_row_bytes(t.type, int(t.cols()));
        for (Node& n : nodes_)
          if (n.nvocab > 0) n.output = make_matrix(t.type, n.nvocab, int(t.cols()), data[i] + size_t(n.vocab0) * row_bytes, &n);
        output_.type = t.type;
        output_.rows = int(t.rows());
        output_.cols = int(t.cols());
        has_output_ = true;
        break;
      }
      case Role::OutputNorm: output_norm_.assign(f, f + t.cols()); break;
      case Role::RopeFreqs: rope_freqs_.assign(f, f + t.cols()); break;
      default: bad_input(std::string("load: ") + role_name(t.role) + " is not run by this forward pass");
    }
  }
}

namespace {
void check_group(const MatrixGroup& g, int want_rows, int want_cols, const std::string& what) {
  int rows = 0;
  for (const Matrix& m : g.parts) {
    if (m.cols != want_cols) bad_input(what + ": wrong input width");
    rows += m.rows;
  }
  if (rows != want_rows || (want_rows > 0 && g.parts.empty())) bad_input(what + ": missing or wrong output size");
}

}  // namespace

// Tied embeddings (no output matrix in the file): each node takes its vocabulary rows of the packed
// token_embd.
void Model::tie_output() {
  const int D = cfg_.n_embd;
  for (Node& n : nodes_) {
    if (n.nvocab == 0) continue;
    if (n.nvocab == cfg_.n_vocab) {
      n.output = token_embd_;  // one node: shared, as one matrix
      continue;
    }
    Matrix m;
    m.type = token_embd_.type;
    m.rows = n.nvocab;
    m.cols = D;
    const size_t off = packed_bytes(m.type, n.vocab0, D), bytes = packed_bytes(m.type, n.nvocab, D);
    BindStatus st = BindStatus::kNotAsked;
    m.data = node_array<uint8_t>(bytes, n.spec.mem_node, &st);
    const size_t avail = packed_bytes(m.type, cfg_.n_vocab, D) - off;  // the last node's padding rows
    std::memcpy(m.data.get(), token_embd_.data.get() + off, std::min(bytes, avail));
    n.bind = std::max(n.bind, st);
    n.weight_bytes += bytes;
    weight_bytes_ += bytes;
    n.output = std::move(m);
  }
}

void Model::finish_loading() {
  const int D = cfg_.n_embd, hd = cfg_.head_dim, F = cfg_.n_ff;
  for (size_t i = 0; i < loaded_.size(); ++i)
    if (!loaded_[i]) bad_input(i == 0 ? std::string("model-wide tensors not loaded") : "layer " + std::to_string(i - 1) + " not loaded");
  if (token_embd_.rows != cfg_.n_vocab || token_embd_.cols != D) bad_input("token_embd: wrong shape");
  if (!has_output_) tie_output();
  if (int(output_norm_.size()) != D) bad_input("output_norm: wrong size");
  if (!rope_freqs_.empty() && int(rope_freqs_.size()) != cfg_.rope_dim / 2) bad_input("rope_freqs: wrong size");
  for (size_t i = 0; i < rope_freqs_.size(); ++i) inv_freq_[i] /= rope_freqs_[i];
  const int nq = cfg_.n_head * hd, nkv = cfg_.n_head_kv * hd;
  if (nq % ROW_TILE || nkv % ROW_TILE || F % ROW_TILE) bad_input("head and ffn sizes must be multiples of 8");
  for (int l = 0; l < cfg_.n_layer; ++l) {
    const Layer& L = layers_[l];
    const std::string at = "layer " + std::to_string(l);
    if (int(L.attn_norm.size()) != D || int(L.ffn_norm.size()) != D) bad_input(at + ": norm size");
    if (L.rows_seen[kQKV] != nq + 2 * nkv) bad_input(at + " qkv: missing or wrong output size");
    if (L.rows_seen[kWO] != D) bad_input(at + " wo: missing or wrong output size");
    const bool moe = cfg_.ffn == FfnKind::MoE;
    if (moe) check_experts(l);
    if (!moe && L.rows_seen[kGateUp] != 2 * F) bad_input(at + " gate_up: missing or wrong output size");
    if (!moe && L.rows_seen[kDown] != D) bad_input(at + " down: missing or wrong output size");
    for (size_t ni = 0; ni < nodes_.size(); ++ni) {
      const Node& n = nodes_[ni];
      const NodeLayer& NL = n.layers[l];
      const std::string nat = at + " node " + std::to_string(ni);
      check_group(NL.qkv, (n.nh + 2 * n.nkv) * hd, D, nat + " qkv");
      check_group(NL.wo, n.nh ? D : 0, n.nh * hd, nat + " wo");
      if (!moe) {
        check_group(NL.gate_up, 2 * n.nf, D, nat + " gate_up");
        check_group(NL.down, n.nf ? D : 0, n.nf, nat + " down");
      }
      if (n.nh && (NL.q_off < 0 || NL.k_off < 0 || NL.v_off < 0)) bad_input(nat + ": q/k/v split");
      if (n.nf && NL.up_off < 0) bad_input(nat + ": gate/up split");
    }
  }
  for (size_t ni = 0; ni < nodes_.size(); ++ni) {
    const Node& n = nodes_[ni];
    if (n.nvocab && (n.output.rows != n.nvocab || n.output.cols != D)) bad_input("output: wrong shape");
  }
  if (has_output_ && (output_.rows != cfg_.n_vocab || output_.cols != D)) bad_input("output: wrong shape");
  plan_act_groups();
}

// Each matmul input's act_group, the largest over every node's matrices that read it (a node's
// share of a matrix has the file tensor's type, so nodes agree; an empty share says nothing).
void Model::plan_act_groups() {
  for (int l = 0; l < cfg_.n_layer; ++l) {
    int* g = layers_[l].act_group;
    g[kGateUp] = std::max(1, act_group(layers_[l].router.type));  // (F32 when the model has no router)
    for (const Node& n : nodes_) {
      const NodeLayer& NL = n.layers[l];
      g[kQKV] = std::max(g[kQKV], NL.qkv.act_group());
      g[kWO] = std::max(g[kWO], NL.wo.act_group());
      g[kGateUp] = std::max(g[kGateUp], NL.gate_up.act_group());
      g[kDown] = std::max(g[kDown], NL.down.act_group());
      for (const MatrixGroup& e : NL.exp_gate_up) g[kGateUp] = std::max(g[kGateUp], e.act_group());
      for (const MatrixGroup& e : NL.exp_down) g[kDown] = std::max(g[kDown], e.act_group());
    }
  }
  for (const Node& n : nodes_)
    if (n.nvocab) out_act_group_ = std::max(out_act_group_, act_group(n.output.type));
}

}  // namespace sysinfer
