// The forward pass: one call per step runs embeddings, every layer and the logits of the rows that
// need them, on every thread of every node (matmuls, norms, the reductions across nodes).
#include <algorithm>
#include <cmath>

#include "attention.h"
#include "model.h"
#include "model_internal.h"

namespace sysinfer {

void Model::validate(const StepBatch& b) const {
  if (!cache_ready_) bad_input("step: init_cache was not called");
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
void Model::step(const StepBatch& b, float* logits) {
  validate(b);
  for (Node& n : nodes_) {
    plan_attention(n, b);
    for (int i = 0; i < kGroups * cfg_.n_layer + 1; ++i) n.matmul_next[i].store(0, std::memory_order_relaxed);
  }
  auto task = [&](int tid) { forward(tid, b, logits); };
  pool_->run(task);
}

// for_tile_chunks (model_internal.h) hands out each matmul's tiles to the node's threads.

// y[t][...] = group(x[t]) for every token, by node n's threads: quantized parts read xq
// ([n_tok][cols / 32] ActBlocks), float parts x ([n_tok][cols]).
void Model::matmul(Node& n, int op, const MatrixGroup& g, const float* x, const ActBlock* xq, int n_tok, float* y,
                   int ldy) {
  for_tile_chunks(n, op, g.tiles, [&](int tile0, int tile1) {
    int first = 0;
    for (size_t i = 0; i < g.parts.size(); ++i) {
      const Matrix& m = g.parts[i];
      const int lo = std::max(tile0 - first, 0), hi = std::min(tile1 - first, m.tiles());
      if (lo < hi)
        kernels_->gemm(m.type, m.data.get(), m.cols, lo, hi, m.quantized() ? static_cast<const void*>(xq) : x,
                       n_tok, y + g.offsets[i], ldy);
      first += m.tiles();
    }
  });
}

// out[r] = x[r] / rms(x[r]) * w for rows split across all threads; optionally quantized as well.
void Model::rms_norm_rows(int tid, const float* x, const float* w, int n_rows, float* out, ActBlock* outq,
                          int group) {
  const int D = cfg_.n_embd;
  int r0, r1;
  split_range(n_rows, tid, pool_->size(), &r0, &r1);
  for (int r = r0; r < r1; ++r) {
    const float* xr = x + size_t(r) * D;
    float* o = out + size_t(r) * D;
    double ss = 0;
    for (int i = 0; i < D; ++i) ss += double(xr[i]) * xr[i];
    const float scale = 1.f / std::sqrt(float(ss / D) + cfg_.norm_eps);
    for (int i = 0; i < D; ++i) o[i] = xr[i] * scale * w[i];
    kernels_->quantize_act(o, outq + size_t(r) * (D / QK), D, group);
  }
}

// The reduction across nodes: x[t] += every node's partial sum (of wo if add_attn, of down if
// add_ffn), node after node in a fixed order; then, with w, the next norm of the row into xn_ / xq_.
// Rows are split across all threads: each row is read from every node's memory once.
void Model::reduce_and_norm(int tid, const float* w, bool add_attn, bool add_ffn, int group, int n_tok) {
  const int D = cfg_.n_embd;
  int r0, r1;
  split_range(n_tok, tid, pool_->size(), &r0, &r1);
  for (int r = r0; r < r1; ++r) {
    float* xr = x_.data() + size_t(r) * D;
    for (const Node& n : nodes_) {
      const bool moe = add_ffn && cfg_.ffn == FfnKind::MoE;
      if (!(add_attn && n.nh) && !(add_ffn && (moe ? n.ndr : n.nf))) continue;
      if (moe) moe_combine_row(n, r);  // the node's part of row r (its down rows' columns), here
      const float* p = n.part.get() + size_t(r) * D;
      for (int i = moe ? n.dr0 : 0; i < (moe ? n.dr0 + n.ndr : D); ++i) xr[i] += p[i];
    }
    if (!w) continue;
    float* o = xn_.data() + size_t(r) * D;
    double ss = 0;
    for (int i = 0; i < D; ++i) ss += double(xr[i]) * xr[i];
    const float scale = 1.f / std::sqrt(float(ss / D) + cfg_.norm_eps);
    for (int i = 0; i < D; ++i) o[i] = xr[i] * scale * w[i];
    kernels_->quantize_act(o, xq_.data() + size_t(r) * (D / QK), D, group);
  }
}

// SwiGLU of node n's FFN columns, a = silu(gate) * up (the input of its down slice), quantized for
// it where it takes quantized blocks (`group` of them to a scale). The node's threads split the
// [T][nf / (32 group)] units of columns, not the tokens: a decode step's one token would leave every
// thread but one waiting.
void Model::swiglu(Node& n, int rank, const NodeLayer& L, int group, int n_tok) {
  const int F = n.nf, width = QK * group, units_per_tok = F / width;
  const bool quantize = L.down.any_quantized();
  int u0, u1;
  split_range(n_tok * units_per_tok, rank, n.n_threads, &u0, &u1);
  for (int u = u0; u < u1; ++u) {  // unit u: token t, columns [i0, i0 + width); its blocks at xq[i0 / QK] of [T][nf / QK]
    const int t = u / units_per_tok, i0 = (u % units_per_tok) * width;
    const float* g = n.gate_up.get() + size_t(t) * L.gate_up.width;  // [gate | up] row of token t
    float* a = n.act.get() + size_t(t) * F;
    for (int i = i0; i < i0 + width; ++i) a[i] = g[i] / (1.f + std::exp(-g[i])) * g[L.up_off + i];
    if (quantize) kernels_->quantize_act(a + i0, n.xq.get() + size_t(t) * (F / QK) + i0 / QK, width, group);
  }
}

// One forward pass. Every thread runs this; thread tid belongs to node g = group_of(tid) and works
// on that node's slices (rank among its threads). Phases that touch only the node's data end in a
// group barrier; the two reductions per layer (after wo, after down) and the norms they feed use
// all threads and pool barriers.
void Model::forward(int tid, const StepBatch& b, float* logits) {
  const int D = cfg_.n_embd, T = b.n_tok, nt = pool_->size();
  Node& n = nodes_[pool_->group_of(tid)];
  const int rank = tid - n.thread0, A = n.nh * cfg_.head_dim;
  int t0, t1;
  split_range(T, tid, nt, &t0, &t1);
  // Embeddings and this step's RoPE angles.
  for (int t = t0; t < t1; ++t) {
    dequantize_packed_row(token_embd_.type, token_embd_.data.get(), D, b.token_ids[t], x_.data() + size_t(t) * D);
    if (cfg_.positions == Positions::Rope) {
      float* cs = rope_cs_.data() + size_t(t) * cfg_.rope_dim;
      for (int i = 0; i < cfg_.rope_dim / 2; ++i) {
        const float angle = float(b.positions[t]) * inv_freq_[i];
        cs[2 * i] = std::cos(angle) * cfg_.rope_mscale;  // mscale: 1 but for YaRN
        cs[2 * i + 1] = std::sin(angle) * cfg_.rope_mscale;
      }
    }
  }
  pool_->barrier(tid);
  rms_norm_rows(tid, x_.data(), layers_[0].attn_norm.data(), T, xn_.data(), xq_.data(), layers_[0].act_group[kQKV]);
  pool_->barrier(tid);

  int op = 0;  // matmuls of this step in order: every thread counts them the same way
  int nt0, nt1;
  split_range(T, rank, n.n_threads, &nt0, &nt1);  // this thread's tokens within its node
  for (int l = 0; l < cfg_.n_layer; ++l) {
    const NodeLayer& L = n.layers[l];
    const bool attn_here = n.nh > 0, ffn_here = n.nf > 0;
    // Attention of the node's heads: xn_ / xq_ (every node reads the shared normed input).
    if (attn_here) {
      matmul(n, op, L.qkv, xn_.data(), xq_.data(), T, n.qkv.get(), L.qkv.width);
      pool_->group_barrier(tid);
      rope_and_store_kv(n, rank, l, b);
      pool_->group_barrier(tid);
      attention(n, rank, l, b);
      pool_->group_barrier(tid);
      if (!n.split_tokens.empty()) {
        combine_partials(n, rank);
        pool_->group_barrier(tid);
      }
      if (L.wo.any_quantized())
        for (int t = nt0; t < nt1; ++t)
          kernels_->quantize_act(n.attn.get() + size_t(t) * A, n.xq.get() + size_t(t) * (A / QK), A,
                                 layers_[l].act_group[kWO]);
      pool_->group_barrier(tid);
      matmul(n, op + 1, L.wo, n.attn.get(), n.xq.get(), T, n.part.get(), D);
    }
    op += 2;
    pool_->barrier(tid);
    // x += every node's attention output; the FFN norm of the result.
    reduce_and_norm(tid, layers_[l].ffn_norm.data(), true, false, layers_[l].act_group[kGateUp], T);
    if (cfg_.ffn == FfnKind::MoE) {
      moe_ffn(tid, n, rank, l, op, T);  // every thread; it takes the barriers it needs
    } else {
      pool_->barrier(tid);  // every row normed
      if (ffn_here) {
        matmul(n, op, L.gate_up, xn_.data(), xq_.data(), T, n.gate_up.get(), L.gate_up.width);
        pool_->group_barrier(tid);
        swiglu(n, rank, L, layers_[l].act_group[kDown], T);
        pool_->group_barrier(tid);
        matmul(n, op + 1, L.down, n.act.get(), n.xq.get(), T, n.part.get(), D);
      }
    }
    op += 2;
    pool_->barrier(tid);
    // x += every node's FFN output; the next layer's attention norm (none after the last layer).
    const bool last = l + 1 == cfg_.n_layer;
    reduce_and_norm(tid, last ? nullptr : layers_[l + 1].attn_norm.data(), false, true,
                    last ? 1 : layers_[l + 1].act_group[kQKV], T);
    pool_->barrier(tid);
  }

  // Final norm of the rows whose logits are wanted, gathered into rows 0..n_out-1.
  int o0, o1;
  split_range(b.n_out, tid, nt, &o0, &o1);
  for (int o = o0; o < o1; ++o) {
    const float* xr = x_.data() + size_t(b.logits_rows[o]) * D;
    std::copy(xr, xr + D, out_rows_.data() + size_t(o) * D);
  }
  pool_->barrier(tid);
  rms_norm_rows(tid, out_rows_.data(), output_norm_.data(), b.n_out, xn_.data(), xq_.data(), out_act_group_);
  pool_->barrier(tid);
  {
    const int V = padded_rows(cfg_.n_vocab);
    if (b.n_out > 0 && n.nvocab > 0) {
      const Matrix& out = n.output;
      for_tile_chunks(n, op, out.tiles(), [&](int tile0, int tile1) {
        kernels_->gemm(out.type, out.data.get(), D, tile0, tile1,
                       out.quantized() ? static_cast<const void*>(xq_.data()) : xn_.data(), b.n_out,
                       logits_pad_.data() + n.vocab0, V);
      });
    }
    pool_->barrier(tid);
    for (int o = o0; o < o1; ++o)
      std::copy(logits_pad_.data() + size_t(o) * V, logits_pad_.data() + size_t(o) * V + cfg_.n_vocab,
                logits + size_t(o) * cfg_.n_vocab);
  }
}

}  // namespace sysinfer
