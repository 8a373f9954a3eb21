// The model's nodes: each NUMA node's share of the heads, FFN columns and vocabulary rows (the plan
// comes from sysinfer/topology.py), its threads in the pool; and the position tables (RoPE
// frequencies, ALiBi slopes) every node reads.
#include <algorithm>
#include <cmath>

#include "attention.h"
#include "model.h"
#include "model_internal.h"

namespace sysinfer {

namespace {

// Shares must cut [0, n) in order, at multiples of `unit` (the end excepted).
void check_cuts(const std::vector<NodeSpec>& nodes, int n, int unit, int NodeShare::*lo, int NodeShare::*hi,
                const char* what) {
  int at = 0;
  for (size_t i = 0; i < nodes.size(); ++i) {
    const NodeShare& s = nodes[i].share;
    if (s.*lo != at || s.*hi < s.*lo || s.*hi > n || (s.*hi % unit && s.*hi != n))
      bad_input(std::string("node plan: ") + what + " shares must cut [0, " + std::to_string(n) +
                ") in order at multiples of " + std::to_string(unit) + " (node " + std::to_string(i) + ")");
    at = s.*hi;
  }
  if (at != n) bad_input(std::string("node plan: ") + what + " shares must end at " + std::to_string(n));
}

}  // namespace

Model::Model(const ModelDesc& desc, const std::vector<NodeSpec>& specs)
    : cfg_(desc), kernels_(&select_kernels()) {
  check_description(cfg_);
  if (specs.empty()) bad_input("node plan: at least one node");
  check_cuts(specs, cfg_.n_head_kv, 1, &NodeShare::kv0, &NodeShare::kv1, "KV head");
  check_cuts(specs, cfg_.n_ff, QK, &NodeShare::ff0, &NodeShare::ff1, "FFN column");
  check_cuts(specs, cfg_.n_vocab, ROW_TILE, &NodeShare::vocab0, &NodeShare::vocab1, "vocabulary row");
  std::vector<NodeSpec> with_down = specs;  // one node's empty down share: all of it
  NodeShare& only = with_down[0].share;
  if (with_down.size() == 1 && only.down0 == only.down1) only.down0 = 0, only.down1 = cfg_.n_embd;
  if (cfg_.ffn == FfnKind::MoE)
    check_cuts(with_down, cfg_.n_embd, ROW_TILE, &NodeShare::down0, &NodeShare::down1, "expert down row");
  layers_.resize(cfg_.n_layer);
  loaded_.assign(cfg_.n_layer + 1, false);
  const int group = cfg_.n_head / cfg_.n_head_kv;
  std::vector<int> sizes, cpus;
  bool pinned = true;
  nodes_.resize(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    Node& n = nodes_[i];
    n.spec = with_down[i];
    const NodeShare& s = with_down[i].share;
    n.kv0 = s.kv0;
    n.nkv = s.kv1 - s.kv0;
    n.head0 = s.kv0 * group;
    n.nh = n.nkv * group;
    n.ff0 = s.ff0;
    n.nf = s.ff1 - s.ff0;
    n.vocab0 = s.vocab0;
    n.nvocab = s.vocab1 - s.vocab0;
    if (cfg_.ffn == FfnKind::MoE) {
      n.dr0 = s.down0;
      n.ndr = s.down1 - s.down0;
    }
    if (specs.size() > 1 && (n.nh * cfg_.head_dim) % QK) bad_input("node plan: node " + std::to_string(i) +
        "'s query heads must span whole blocks of 32 columns (cut KV heads in larger groups)");
    n.n_threads = std::max(1, specs[i].n_threads);
    n.thread0 = int(cpus.size());
    sizes.push_back(n.n_threads);
    for (int t = 0; t < n.n_threads; ++t)
      cpus.push_back(specs[i].cpus.empty() ? -1 : specs[i].cpus[t % specs[i].cpus.size()]);
    pinned = pinned && !specs[i].cpus.empty();
    n.layers.resize(cfg_.n_layer);
  }
  if (!pinned) cpus.clear();
  pool_ = std::make_unique<ThreadPool>(sizes, cpus);
  rope_tables();
}

Model::~Model() = default;

// RoPE's inverse frequencies (rope_freqs divides them once loaded), or ALiBi's slope per head.
void Model::rope_tables() {
  if (cfg_.positions == Positions::Rope) {
    inv_freq_.resize(cfg_.rope_dim / 2);
    for (int i = 0; i < cfg_.rope_dim / 2; ++i)
      inv_freq_[i] = std::pow(cfg_.rope_base, -2.f * i / cfg_.rope_dim) *
                     (cfg_.rope_freq_mul.empty() ? 1.f : cfg_.rope_freq_mul[i]);
  } else if (cfg_.positions == Positions::Alibi) {
    // ALiBi slopes: geometric in the nearest power of two of the head count, interleaved beyond.
    const int n = cfg_.n_head;
    const int pow2 = 1 << int(std::floor(std::log2(double(n))));
    const float m0 = std::pow(2.f, -cfg_.alibi_max_bias / pow2);
    const float m1 = std::pow(2.f, -cfg_.alibi_max_bias / 2.f / pow2);
    alibi_slopes_.resize(n);
    for (int h = 0; h < n; ++h)
      alibi_slopes_[h] = h < pow2 ? std::pow(m0, float(h + 1)) : std::pow(m1, float(2 * (h - pow2) + 1));
  }
}

}  // namespace sysinfer
