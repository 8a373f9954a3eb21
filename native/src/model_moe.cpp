// Mixture of experts (qwen3moe): a router picks n_expert_used of n_expert SwiGLU experts per token
// (softmax over the router's logits, the top k, their probabilities renormalised to sum to one) and
// the layer's output is the weighted sum of those experts' outputs.
//
// A step groups its rows by expert: every (token, chosen expert) pair is one "expert row", and the
// rows of one expert are laid side by side so each expert's weights are read once per step, by one
// GEMM over its rows. A decode step of one token reads only its k experts' weights: that is what
// makes a 30B-A3B model run at the speed of its 3B active parameters.
//
// Across NUMA nodes every node works on every active expert: it holds its FFN columns of each
// expert's gate and up (rows of those matrices, cut at 32) and its rows of each expert's down (cut at
// tiles of 8), over all the FFN columns. A dense FFN cuts down by the same columns as gate and up,
// but an expert's columns are few (768 in Qwen3-30B-A3B: 3 K-quant blocks), so 2 nodes could only
// take them 1 : 2 and a 4th node nothing. Between the two halves every node's SwiGLU columns meet in
// one shared buffer (one more barrier across nodes); each down row is then a whole dot product on one
// node, the same arithmetic as on one node.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "model.h"
#include "numa.h"
#include "model_internal.h"

namespace sysinfer {

// Layer `layer`'s router and expert tensors (t: router [E][D], gate_exps and up_exps [E][F][D],
// down_exps [E][D][F], GGUF layout, one expert's matrix after another): the router is shared, every
// node packs its FFN columns of each expert (gate and up rows fused into one matrix when they share
// a type; down's columns gathered from every row).
namespace {
constexpr size_t kArenaAlign = 64;
// Steps of at most this many tokens compute the router on one thread (moe_ffn).
constexpr int kSoloRouterTokens = 4;
// Steps of at most this many tokens give each active expert to one thread whole (moe_experts_whole)
// when there are at least this many experts per thread of a node (else the tile split balances better).
constexpr int kWholeExpertTokens = 16;
constexpr int kWholeExpertItemsPerThread = 2;
size_t aligned(size_t n) { return (n + kArenaAlign - 1) / kArenaAlign * kArenaAlign; }
}  // namespace

// A matrix packed into `arena` at byte `*at` (advanced past it): every expert of a layer lives in
// one allocation per node, big enough for 2 MB pages (an expert's matrices alone, ~1 MB each in
// Qwen3-30B-A3B, would each fall back to 4 KB pages and their TLB misses).
Matrix Model::arena_matrix(const std::shared_ptr<uint8_t>& arena, size_t* at, WType type, int rows, int cols,
                           const uint8_t* gguf_data, Node& owner) {
  if (cols % block_size_of(type) || cols % QK) bad_input("matrix columns must be a multiple of 32 and of the type's block size");
  Matrix m;
  m.type = type;
  m.rows = rows;
  m.cols = cols;
  const size_t bytes = packed_bytes(type, rows, cols);
  m.data = std::shared_ptr<uint8_t>(arena, arena.get() + *at);  // shares the arena's lifetime
  pack_matrix(type, gguf_data, rows, cols, m.data.get());
  *at += aligned(bytes);
  weight_bytes_ += bytes;
  owner.weight_bytes += bytes;
  return m;
}

// Layer `layer`'s router and expert tensors (t: router [E][D], gate_exps and up_exps [E][F][D],
// down_exps [E][D][F], GGUF layout, one expert's matrix after another): the router is shared, every
// node packs its FFN columns of each expert's gate and up (rows of them, fused into one matrix when
// they share a type) and its rows of each expert's down into one arena of its memory.
void Model::load_experts(int layer, const TensorDesc* t[4], const uint8_t* data[4]) {
  const int D = cfg_.n_embd, F = cfg_.n_ff, E = cfg_.n_expert;
  const std::string at = "blk." + std::to_string(layer) + ".";
  for (int i = 0; i < 4; ++i)
    if (!t[i]) bad_input("load: missing " + at + role_name(Role(int(Role::FfnRouter) + i)));
  layers_[layer].router = make_matrix(t[0]->type, E, D, data[0], nullptr);
  const WType tg = t[1]->type, tu = t[2]->type, td = t[3]->type;
  const size_t g_row = gguf_row_bytes(tg, D), u_row = gguf_row_bytes(tu, D), d_row = gguf_row_bytes(td, F);
  std::vector<uint8_t> buf;
  for (Node& n : nodes_) {
    if (n.nf == 0 && n.ndr == 0) continue;
    NodeLayer& L = n.layers[layer];
    L.exp_gate_up.assign(E, MatrixGroup());
    L.exp_down.assign(E, MatrixGroup());
    L.up_off = n.nf;  // nf is a multiple of 32: the gate part fills whole tiles either way
    const size_t gate_up = n.nf == 0 ? 0
                           : tg == tu ? aligned(packed_bytes(tg, 2 * n.nf, D))
                                      : aligned(packed_bytes(tg, n.nf, D)) + aligned(packed_bytes(tu, n.nf, D));
    const size_t per_expert = gate_up + (n.ndr ? aligned(packed_bytes(td, n.ndr, F)) : 0);
    BindStatus st = BindStatus::kNotAsked;
    std::shared_ptr<uint8_t> arena = node_array<uint8_t>(per_expert * E, n.spec.mem_node, &st);
    n.bind = std::max(n.bind, st);
    size_t off = 0;
    for (int e = 0; e < E; ++e) {
      const uint8_t* gate = data[1] + (size_t(e) * F + n.ff0) * g_row;  // [nf][D] this node's rows
      const uint8_t* up = data[2] + (size_t(e) * F + n.ff0) * u_row;
      if (n.nf == 0) {
      } else if (tg == tu) {  // one matrix [2 nf][D]: gate rows, then up rows
        buf.resize(size_t(n.nf) * (g_row + u_row));
        std::memcpy(buf.data(), gate, size_t(n.nf) * g_row);
        std::memcpy(buf.data() + size_t(n.nf) * g_row, up, size_t(n.nf) * u_row);
        L.exp_gate_up[e].add(arena_matrix(arena, &off, tg, 2 * n.nf, D, buf.data(), n));
      } else {
        L.exp_gate_up[e].add(arena_matrix(arena, &off, tg, n.nf, D, gate, n));
        L.exp_gate_up[e].add(arena_matrix(arena, &off, tu, n.nf, D, up, n));
      }
      // down: [ndr][F] this node's rows of expert e, whole.
      if (n.ndr) L.exp_down[e].add(arena_matrix(arena, &off, td, n.ndr, F, data[3] + (size_t(e) * D + n.dr0) * d_row, n));
    }
  }
}

void Model::check_experts(int layer) const {
  const std::string at = "layer " + std::to_string(layer);
  const Matrix& r = layers_[layer].router;
  if (r.rows != cfg_.n_expert || r.cols != cfg_.n_embd) bad_input(at + ": router missing or of the wrong shape");
  for (const Node& n : nodes_) {
    if (n.nf == 0 && n.ndr == 0) continue;
    const NodeLayer& L = n.layers[layer];
    if (int(L.exp_gate_up.size()) != cfg_.n_expert || int(L.exp_down.size()) != cfg_.n_expert)
      bad_input(at + ": experts missing");
    // Every expert's matrices alike (one 3-D tensor each): moe_matmul counts tiles per expert.
    for (int e = 0; e < cfg_.n_expert; ++e)
      if (L.exp_gate_up[e].tiles != L.exp_gate_up[0].tiles || L.exp_down[e].tiles != L.exp_down[0].tiles ||
          L.exp_gate_up[e].width != 2 * n.nf || L.exp_down[e].tiles != padded_rows(n.ndr) / ROW_TILE)
        bad_input(at + ": experts of different shapes");
  }
}

void Model::init_moe_scratch(int T) {
  const int k = cfg_.n_expert_used, E = cfg_.n_expert, D = cfg_.n_embd, S = T * k;
  bool any_float = false;
  for (const Node& n : nodes_)
    for (const NodeLayer& L : n.layers)
      for (const MatrixGroup& g : L.exp_gate_up) any_float = any_float || g.any_float();
  router_logits_.assign(size_t(T) * padded_rows(E), 0.f);
  router_probs_.assign(E, 0.f);
  router_order_.assign(E, 0);
  slot_of_.assign(S, 0);
  slot_weight_.assign(S, 0.f);
  slot_token_.assign(S, 0);
  active_.assign(E, 0);
  expert_rows_.assign(E + 1, 0);
  expert_cursor_.assign(E, 0);
  moe_xq_.assign(size_t(S) * D / QK, ActBlock{});
  moe_x_.assign(any_float ? size_t(S) * D : 0, 0.f);
  moe_act_.assign(nodes_.size() > 1 ? size_t(S) * cfg_.n_ff : 0, 0.f);
}

// The routing of a step (one thread): each token's top k experts and their weights, then the expert
// rows grouped by expert (tokens in order within an expert) and the FFN input gathered in that order.
void Model::moe_route(int n_tok) {
  const int k = cfg_.n_expert_used, E = cfg_.n_expert, D = cfg_.n_embd, ldr = padded_rows(E);
  std::fill(expert_rows_.begin(), expert_rows_.end(), 0);
  for (int t = 0; t < n_tok; ++t) {
    const float* lg = router_logits_.data() + size_t(t) * ldr;
    const float mx = *std::max_element(lg, lg + E);
    float* p = router_probs_.data();
    for (int e = 0; e < E; ++e) p[e] = std::exp(lg[e] - mx);  // softmax; its sum cancels in the renormalisation
    for (int e = 0; e < E; ++e) router_order_[e] = e;
    // The k most probable, highest first (the lower index first on a tie).
    std::partial_sort(router_order_.begin(), router_order_.begin() + k, router_order_.end(),
                      [p](int a, int b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
    double sum = 0;
    for (int j = 0; j < k; ++j) sum += p[router_order_[j]];
    // The k weights sum to one (llama.cpp clamps the sum at fp16's smallest normal; a softmax's top
    // entry is never below 1 / E of the total here, so the clamp only guards against underflow).
    const float inv = 1.f / std::max(float(sum), 6.103515625e-5f);
    for (int j = 0; j < k; ++j) {
      slot_of_[size_t(t) * k + j] = router_order_[j];  // the expert, until it becomes the row below
      slot_weight_[size_t(t) * k + j] = p[router_order_[j]] * inv;
      ++expert_rows_[router_order_[j] + 1];
    }
  }
  n_active_ = 0;
  for (int e = 0; e < E; ++e) {
    if (expert_rows_[e + 1] > 0) active_[n_active_++] = e;
    expert_rows_[e + 1] += expert_rows_[e];
    expert_cursor_[e] = expert_rows_[e];
  }
  moe_layer_steps_.fetch_add(1, std::memory_order_relaxed);
  moe_active_sum_.fetch_add(uint64_t(n_active_), std::memory_order_relaxed);
  const int nb = D / QK;
  for (int t = 0; t < n_tok; ++t)
    for (int j = 0; j < k; ++j) {
      int& slot = slot_of_[size_t(t) * k + j];
      const int s = expert_cursor_[slot]++;
      slot = s;
      slot_token_[s] = t;
      std::copy(xq_.data() + size_t(t) * nb, xq_.data() + size_t(t + 1) * nb, moe_xq_.data() + size_t(s) * nb);
      if (!moe_x_.empty()) std::copy(xn_.data() + size_t(t) * D, xn_.data() + size_t(t + 1) * D, moe_x_.data() + size_t(s) * D);
    }
}

// y[row] = g applied to x[row] for expert rows [r0, r0 + rows), tiles [lo, hi) of the group (its
// parts end to end). xq rows are cols / 32 blocks, x rows x_stride floats.
void Model::moe_group_gemm(const MatrixGroup& g, int lo, int hi, const float* x, const ActBlock* xq, int x_stride,
                           int r0, int rows, float* y, int ldy) {
  int first = 0;
  for (size_t i = 0; i < g.parts.size(); ++i) {
    const Matrix& m = g.parts[i];
    const int tlo = std::max(lo - first, 0), thi = std::min(hi - first, m.tiles());
    if (tlo < thi) {
      const void* in = m.quantized() ? static_cast<const void*>(xq + size_t(r0) * (m.cols / QK))
                                     : static_cast<const void*>(x + size_t(r0) * x_stride);
      kernels_->gemm(m.type, m.data.get(), m.cols, tlo, thi, in, rows, y + size_t(r0) * ldy + g.offsets[i], ldy);
    }
    first += m.tiles();
  }
}

// y[row] = expert(row)'s group applied to x[row] for every grouped expert row, on node n's threads.
// The work is the active experts' tiles laid end to end (every expert has as many), taken in chunks
// as matmul takes them; a chunk may run over two experts.
void Model::moe_matmul(Node& n, int op, const std::vector<MatrixGroup>& groups, const float* x, const ActBlock* xq,
                       int x_stride, float* y, int ldy) {
  const int per = groups[active_[0]].tiles;
  for_tile_chunks(n, op, n_active_ * per, [&](int c0, int c1) {
    for (int a = c0 / per; a < n_active_ && a * per < c1; ++a) {
      const int e = active_[a], lo = std::max(c0 - a * per, 0), hi = std::min(c1 - a * per, per);
      const int r0 = expert_rows_[e];
      moe_group_gemm(groups[e], lo, hi, x, xq, x_stride, r0, expert_rows_[e + 1] - r0, y, ldy);
    }
  });
}

// SwiGLU of unit u of the [S][nf / (32 group)] expert-row units on node n: act[r][i] = silu(gate) * up
// for expert row r, node columns [i0, i0 + 32 group) (act rows ld floats apart), and, if `quantize`,
// quantized for down (`group` blocks to a scale, kernels.h's act_group; one node: its rows are whole).
void Model::moe_swiglu_unit(Node& n, const NodeLayer& L, int u, int group, float* act, int ld, bool quantize) {
  const int width = QK * group, units_per_row = n.nf / width, gw = L.exp_gate_up[0].width;
  const int r = u / units_per_row, i0 = (u % units_per_row) * width;
  const float* g = n.gate_up.get() + size_t(r) * gw;  // [gate | up] of expert row r
  float* a = act + size_t(r) * ld;
  for (int i = i0; i < i0 + width; ++i) a[i] = g[i] / (1.f + std::exp(-g[i])) * g[L.up_off + i];
  if (quantize) kernels_->quantize_act(a + i0, n.xq.get() + size_t(r) * (n.nf / QK) + i0 / QK, width, group);
}

// A step of few tokens: each active expert is one work item, taken whole by whichever of node n's
// threads is free: its gate/up over the expert's rows, their SwiGLU, its down. No barrier between
// the three (the rows are the item's own), where the tile-split path needs two, and each expert's
// weights are streamed front to back by one thread. Which thread runs an item never changes its result,
// and the arithmetic is the tile-split path's: the same bits.
void Model::moe_experts_whole(Node& n, int op, const NodeLayer& L, int group) {
  std::atomic<int>& next = n.matmul_next[op];
  const int D = cfg_.n_embd, F = n.nf, units_per_row = F / (QK * group);
  const int gw = L.exp_gate_up[0].width, up_tiles = L.exp_gate_up[0].tiles, down_tiles = L.exp_down[0].tiles;
  const bool quantize = L.exp_down[0].any_quantized();
  for (int a = next.fetch_add(1, std::memory_order_relaxed); a < n_active_;
       a = next.fetch_add(1, std::memory_order_relaxed)) {
    const int e = active_[a], r0 = expert_rows_[e], rows = expert_rows_[e + 1] - r0;
    moe_group_gemm(L.exp_gate_up[e], 0, up_tiles, moe_x_.data(), moe_xq_.data(), D, r0, rows, n.gate_up.get(), gw);
    for (int u = r0 * units_per_row; u < (r0 + rows) * units_per_row; ++u)
      moe_swiglu_unit(n, L, u, group, n.act.get(), F, quantize);
    moe_group_gemm(L.exp_down[e], 0, down_tiles, n.act.get(), n.xq.get(), F, r0, rows, n.moe_out.get(), D);
  }
}

// Router logits of tiles [tile0, tile1) of layer l's router for the step's n_tok normed rows (xn_ / xq_).
void Model::moe_router(int l, int tile0, int tile1, int n_tok) {
  const Matrix& router = layers_[l].router;
  if (tile0 < tile1)
    kernels_->gemm(router.type, router.data.get(), cfg_.n_embd, tile0, tile1,
                   router.quantized() ? static_cast<const void*>(xq_.data()) : xn_.data(), n_tok,
                   router_logits_.data(), padded_rows(cfg_.n_expert));
}

// The MoE feed-forward of layer l (every thread of every node calls it, straight after the FFN norm
// of its rows into xn_ / xq_, before any barrier): router logits, routing, then on each node its
// columns of every active expert: gate/up, SwiGLU, down into moe_out. The weighted sum of each token's
// k expert rows is taken by the reduction after the next pool barrier (moe_combine_row).
//
// Barriers are what a decode step waits on (on a loaded machine each one may cost a time slice), so
// a step of one token is routed by the thread that normed its row, at once (no barrier), a step of a
// few by one thread (the router is ~1 MB: less than a barrier's wait), and the experts of a step of
// few tokens are whole work items (moe_experts_whole): 1 pool barrier per MoE FFN, against 5 pool and
// group barriers on the tile-split path that prefill takes. Several nodes: moe_ffn_nodes.
void Model::moe_ffn(int tid, Node& n, int rank, int l, int op, int T) {
  const int nt = pool_->size(), tiles = layers_[l].router.tiles();
  if (T == 1) {
    int r0, r1;
    split_range(T, tid, nt, &r0, &r1);  // as reduce_and_norm split the rows: this thread normed row 0
    if (r0 < r1) {
      moe_router(l, 0, tiles, T);
      moe_route(T);
    }
  } else if (T <= kSoloRouterTokens) {
    pool_->barrier(tid);  // every row normed
    if (tid == 0) {
      moe_router(l, 0, tiles, T);
      moe_route(T);
    }
  } else {
    pool_->barrier(tid);
    const int pairs = (tiles + 1) / 2;  // the router's tile pairs split over all threads
    int p0, p1;
    split_range(pairs, tid, nt, &p0, &p1);
    moe_router(l, 2 * p0, std::min(tiles, 2 * p1), T);
    pool_->barrier(tid);
    if (tid == 0) moe_route(T);
  }
  pool_->barrier(tid);
  if (nodes_.size() > 1) return moe_ffn_nodes(tid, n, rank, l, op, T);
  const NodeLayer& L = n.layers[l];
  if (T <= kWholeExpertTokens && n_active_ >= kWholeExpertItemsPerThread * n.n_threads) {
    moe_experts_whole(n, op, L, layers_[l].act_group[kDown]);
    return;
  }
  const int S = T * cfg_.n_expert_used, D = cfg_.n_embd, F = n.nf;
  moe_matmul(n, op, L.exp_gate_up, moe_x_.data(), moe_xq_.data(), D, n.gate_up.get(), L.exp_gate_up[0].width);
  pool_->group_barrier(tid);
  const int group = layers_[l].act_group[kDown];
  int u0, u1;
  split_range(S * (F / (QK * group)), rank, n.n_threads, &u0, &u1);
  const bool quantize = L.exp_down[0].any_quantized();
  for (int u = u0; u < u1; ++u) moe_swiglu_unit(n, L, u, group, n.act.get(), F, quantize);
  pool_->group_barrier(tid);
  moe_matmul(n, op + 1, L.exp_down, n.act.get(), n.xq.get(), F, n.moe_out.get(), D);
}

// The experts across nodes, after the routing: node n's gate/up rows of every active expert and their
// SwiGLU into its columns of the shared moe_act_, a barrier of every node, then the whole rows of
// moe_act_ quantized into the node's xq (each node its copy: a step's rows are few beside the weights)
// and its down rows of every active expert into its columns of moe_out.
void Model::moe_ffn_nodes(int tid, Node& n, int rank, int l, int op, int T) {
  const NodeLayer& L = n.layers[l];
  const int S = T * cfg_.n_expert_used, D = cfg_.n_embd, F = cfg_.n_ff, group = layers_[l].act_group[kDown];
  if (n.nf) {
    moe_matmul(n, op, L.exp_gate_up, moe_x_.data(), moe_xq_.data(), D, n.gate_up.get(), L.exp_gate_up[0].width);
    pool_->group_barrier(tid);
    int u0, u1;  // units of 32 columns: quantized below, over whole rows
    split_range(S * (n.nf / QK), rank, n.n_threads, &u0, &u1);
    for (int u = u0; u < u1; ++u) moe_swiglu_unit(n, L, u, 1, moe_act_.data() + n.ff0, F, false);
  }
  pool_->barrier(tid);  // every node's columns of moe_act_
  if (n.ndr == 0) return;
  if (L.exp_down[0].any_quantized()) {
    const int width = QK * group, units_per_row = F / width;
    int u0, u1;
    split_range(S * units_per_row, rank, n.n_threads, &u0, &u1);
    for (int u = u0; u < u1; ++u) {
      const int r = u / units_per_row, i0 = (u % units_per_row) * width;
      kernels_->quantize_act(moe_act_.data() + size_t(r) * F + i0, n.xq.get() + size_t(r) * (F / QK) + i0 / QK,
                             width, group);
    }
    pool_->group_barrier(tid);
  }
  moe_matmul(n, op + 1, L.exp_down, moe_act_.data(), n.xq.get(), F, n.moe_out.get() + n.dr0, D);
}

// Node n's part of token row t, its columns [dr0, dr0 + ndr): part[t] = sum_j w[t][j] * out[row of
// (t, j)], in the router's order (highest weight first). Called by the thread that reduces row t,
// after the barrier that ends the node's down GEMMs.
void Model::moe_combine_row(const Node& n, int t) const {
  const int D = cfg_.n_embd, k = cfg_.n_expert_used, c0 = n.dr0, c1 = n.dr0 + n.ndr;
  float* p = n.part.get() + size_t(t) * D;
  std::fill(p + c0, p + c1, 0.f);
  for (int j = 0; j < k; ++j) {
    const float w = slot_weight_[size_t(t) * k + j];
    const float* o = n.moe_out.get() + size_t(slot_of_[size_t(t) * k + j]) * D;
    for (int i = c0; i < c1; ++i) p[i] += w * o[i];
  }
}

}  // namespace sysinfer
