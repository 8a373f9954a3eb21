// The encoder's forward pass: one call runs a batch of whole sequences through every layer and the
// pooling (or rank head) on every thread of the pool, with barriers between the operations.
// Matmuls go through the kernel table (any packed type); the rest is generic C++ written so the
// compiler vectorises its inner loops (keys transposed for the scores, values accumulated by row).
#include <algorithm>
#include <cmath>

#include "encoder.h"
#include "model_internal.h"

namespace sysinfer {

namespace {

constexpr int kTokChunk = 64;   // tokens per matmul work item: the item's weights stay in cache across them
constexpr int kTileChunk = 4;   // tiles (of ROW_TILE rows) per matmul work item
enum Act { kNone, kGelu, kTanh };
constexpr int kQueryTile = 32;  // query rows of one attention tile (scores [kQueryTile][n] in scratch)

// erf(x) by a rational approximation on x clamped to [-4, 4] (the coefficients of Eigen's fast float
// erf): |error| < 5e-7 against the exact erf in float32 over the reals (checked in a test), and, unlike
// std::erf, the compiler vectorises it.
inline float erf_approx(float x) {
  x = std::min(4.f, std::max(-4.f, x));
  const float x2 = x * x;
  float p = -2.72614225801306e-10f;
  p = p * x2 + 2.77068142495902e-08f;
  p = p * x2 + -2.10102402082508e-06f;
  p = p * x2 + -5.69250639462346e-05f;
  p = p * x2 + -7.34990630326855e-04f;
  p = p * x2 + -2.95459980854025e-03f;
  p = p * x2 + -1.60960333262415e-02f;
  float q = -1.45660718464996e-05f;
  q = q * x2 + -2.13374055278905e-04f;
  q = q * x2 + -1.68282697438203e-03f;
  q = q * x2 + -7.37332916720468e-03f;
  q = q * x2 + -1.42647390514189e-02f;
  return x * p / q;
}

// GELU as BERT's `hidden_act: gelu` defines it: x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)).
inline float gelu(float x) { return 0.5f * x * (1.f + erf_approx(x * 0.70710678118654752f)); }

// In place: r = (r - mean) / sqrt(var + eps) * w + b (mean and variance summed in double).
void layer_norm(float* r, int n, const float* w, const float* b, float eps) {
  double s = 0;
  for (int i = 0; i < n; ++i) s += r[i];
  const double mean = s / n;
  double v = 0;
  for (int i = 0; i < n; ++i) v += (r[i] - mean) * (r[i] - mean);
  const float m = float(mean), inv = float(1.0 / std::sqrt(v / n + double(eps)));
  for (int i = 0; i < n; ++i) r[i] = (r[i] - m) * inv * w[i] + b[i];
}

}  // namespace

float encoder_gelu(float x) { return gelu(x); }  // for the kernel test against the exact GELU

void Encoder::run(const int32_t* tokens, int n_tok, const int32_t* seq_starts, int n_seq, bool normalize, float* out) {
  if (max_tokens_ == 0) bad_input("encoder: reserve() was not called");
  if (n_tok <= 0 || n_tok > max_tokens_)
    bad_input("encoder: a call takes 1 to " + std::to_string(max_tokens_) + " tokens, got " + std::to_string(n_tok));
  if (n_seq <= 0 || n_seq > n_tok) bad_input("encoder: sequence count must be in 1..n_tok");
  if (seq_starts[0] != 0 || seq_starts[n_seq] != n_tok) bad_input("encoder: seq_starts must run from 0 to n_tok");
  for (int s = 0; s < n_seq; ++s) {
    const int n = seq_starts[s + 1] - seq_starts[s];
    if (n <= 0 || n > cfg_.n_ctx)
      bad_input("encoder: sequence " + std::to_string(s) + " has " + std::to_string(n) + " tokens; each must have 1 to " +
                std::to_string(cfg_.n_ctx));
  }
  for (int t = 0; t < n_tok; ++t)
    if (tokens[t] < 0 || tokens[t] >= cfg_.n_vocab)
      bad_input("encoder: token id " + std::to_string(tokens[t]) + " is outside the vocabulary (0.." +
                std::to_string(cfg_.n_vocab - 1) + ")");
  for (int i = 0; i < 5 * cfg_.n_layer + 2; ++i) next_[size_t(i)].store(0, std::memory_order_relaxed);
  const Call c{tokens, seq_starts, n_tok, n_seq, normalize, out};
  auto task = [&](int tid) { forward(tid, c); };
  pool_->run(task);
}

void Encoder::forward(int tid, const Call& c) {
  embed_rows(tid, c);
  pool_->barrier(tid);
  for (int l = 0; l < cfg_.n_layer; ++l) layer(tid, l, c);
  if (cfg_.pooling == Pooling::Rank)
    rank_head(tid, c);
  else
    pool(tid, c);
}

// x[t] = LayerNorm(token_embd[id] + token_types[0] + position_embd[position in its sequence]); token
// types are all 0, as llama.cpp gives them (its rerank pairs too). Quantized for layer 0's Q/K/V.
void Encoder::embed_rows(int tid, const Call& c) {
  const int D = cfg_.n_embd;
  int t0, t1;
  split_range(c.n_tok, tid, pool_->size(), &t0, &t1);
  if (t0 >= t1) return;
  float* tmp = scratch_.data() + size_t(tid) * scratch_per_thread_;  // [D]
  int s = int(std::upper_bound(c.seq_starts, c.seq_starts + c.n_seq + 1, t0) - c.seq_starts) - 1;
  const bool quantize = layers_[0].qkv.any_quantized();
  const int group = layers_[0].qkv.act_group();
  for (int t = t0; t < t1; ++t) {
    while (t >= c.seq_starts[s + 1]) ++s;
    float* x = x_.data() + size_t(t) * D;
    dequantize_packed_row(token_embd_.type, token_embd_.data.get(), D, c.tokens[t], x);
    dequantize_packed_row(pos_embd_.type, pos_embd_.data.get(), D, t - c.seq_starts[s], tmp);
    for (int i = 0; i < D; ++i) x[i] += tmp[i];
    if (type_embd_.data) {
      dequantize_packed_row(type_embd_.type, type_embd_.data.get(), D, 0, tmp);
      for (int i = 0; i < D; ++i) x[i] += tmp[i];
    }
    layer_norm(x, D, embd_norm_.data(), embd_norm_b_.data(), cfg_.norm_eps);
    if (quantize) kernels_->quantize_act(x, xq_.data() + size_t(t) * (D / QK), D, group);
  }
}

void Encoder::layer(int tid, int l, const Call& c) {
  const EncoderLayer& L = layers_[size_t(l)];
  const int T = c.n_tok, nq = cfg_.n_head * cfg_.head_dim, F = cfg_.n_ff;
  const bool last = l + 1 == cfg_.n_layer;
  matmul(tid, 5 * l, L.qkv, L.qkv_bias, x_.data(), xq_.data(), T, qkv_.data(), L.qkv.width, kNone);
  pool_->barrier(tid);
  attention(tid, c, L);
  pool_->barrier(tid);
  if (L.wo.any_quantized()) {
    quantize_rows(tid, attn_.data(), T, nq, xq_.data(), L.wo);
    pool_->barrier(tid);
  }
  matmul(tid, 5 * l + 2, L.wo, L.wo_bias, attn_.data(), xq_.data(), T, proj_.data(), L.wo.width, kNone);
  pool_->barrier(tid);
  residual_norm(tid, proj_.data(), L.wo.width, L.attn_norm, L.attn_norm_b, T, &L.up);
  pool_->barrier(tid);
  matmul(tid, 5 * l + 3, L.up, L.up_bias, x_.data(), xq_.data(), T, ff_.data(), L.up.width, kGelu);
  pool_->barrier(tid);
  if (L.down.any_quantized()) {
    quantize_rows(tid, ff_.data(), T, F, xq_.data(), L.down);
    pool_->barrier(tid);
  }
  matmul(tid, 5 * l + 4, L.down, L.down_bias, ff_.data(), xq_.data(), T, proj_.data(), L.down.width, kNone);
  pool_->barrier(tid);
  residual_norm(tid, proj_.data(), L.down.width, L.out_norm, L.out_norm_b, T,
                last ? nullptr : &layers_[size_t(l) + 1].qkv);
  pool_->barrier(tid);
}

// y[t][col] = g(x[t]) + bias[col], then the activation, for n_rows rows: work items of kTokChunk
// tokens by kTileChunk tiles taken by whichever thread is free. x is [n_rows][cols] floats (float
// parts) and xq [n_rows][cols / 32] (quantized parts).
void Encoder::matmul(int tid, int op, const MatrixGroup& g, const std::vector<float>& bias, const float* x,
                     const ActBlock* xq, int n_rows, float* y, int ldy, int act) {
  (void)tid;
  const int n_tc = (n_rows + kTokChunk - 1) / kTokChunk, n_gc = (g.tiles + kTileChunk - 1) / kTileChunk;
  std::atomic<int>& next = next_[size_t(op)];
  for (int it = next.fetch_add(1, std::memory_order_relaxed); it < n_tc * n_gc;
       it = next.fetch_add(1, std::memory_order_relaxed)) {
    const int tc = it % n_tc, gc = it / n_tc;  // neighbouring items share their weights
    const int t0 = tc * kTokChunk, t1 = std::min(n_rows, t0 + kTokChunk);
    const int tile0 = gc * kTileChunk, tile1 = std::min(g.tiles, tile0 + kTileChunk);
    int first = 0;
    for (size_t i = 0; i < g.parts.size(); ++i) {
      const Matrix& m = g.parts[i];
      const int lo = std::max(tile0 - first, 0), hi = std::min(tile1 - first, m.tiles());
      if (lo < hi) {
        const void* in = m.quantized() ? static_cast<const void*>(xq + size_t(t0) * (m.cols / QK))
                                       : static_cast<const void*>(x + size_t(t0) * m.cols);
        kernels_->gemm(m.type, m.data.get(), m.cols, lo, hi, in, t1 - t0, y + size_t(t0) * ldy + g.offsets[i], ldy);
      }
      first += m.tiles();
    }
    const int c0 = tile0 * ROW_TILE, c1 = tile1 * ROW_TILE;  // the group's output columns of this item
    for (int t = t0; t < t1; ++t) {
      float* row = y + size_t(t) * ldy;
      for (int j = c0; j < c1; ++j) row[j] += bias[size_t(j)];
      if (act == kGelu)
        for (int j = c0; j < c1; ++j) row[j] = gelu(row[j]);
      else if (act == kTanh)
        for (int j = c0; j < c1; ++j) row[j] = std::tanh(row[j]);
    }
  }
}

void Encoder::quantize_rows(int tid, const float* x, int n_rows, int cols, ActBlock* xq, const MatrixGroup& next) {
  int r0, r1;
  split_range(n_rows, tid, pool_->size(), &r0, &r1);
  const int group = next.act_group();
  for (int r = r0; r < r1; ++r) kernels_->quantize_act(x + size_t(r) * cols, xq + size_t(r) * (cols / QK), cols, group);
}

// x[t] = LayerNorm(x[t] + y[t]) (post-norm residual), quantized for the next matmul when asked.
void Encoder::residual_norm(int tid, const float* y, int ldy, const std::vector<float>& w, const std::vector<float>& b,
                            int n_rows, const MatrixGroup* next) {
  const int D = cfg_.n_embd;
  int r0, r1;
  split_range(n_rows, tid, pool_->size(), &r0, &r1);
  for (int r = r0; r < r1; ++r) {
    float* x = x_.data() + size_t(r) * D;
    const float* yr = y + size_t(r) * ldy;
    for (int i = 0; i < D; ++i) x[i] += yr[i];
    layer_norm(x, D, w.data(), b.data(), cfg_.norm_eps);
    if (next && next->any_quantized()) kernels_->quantize_act(x, xq_.data() + size_t(r) * (D / QK), D, next->act_group());
  }
}

// Bidirectional attention: every token of a sequence sees the whole sequence. One work item is a
// (sequence, head): its keys (transposed, [hd][n]) and values ([n][hd]) converted to fp16 in the
// thread's scratch as one block of the layout the kernel table's attention reads (kernels.h: the KV
// cache's block with bs = n), then kQueryTile query rows at a time: scores (attn_scores), scaled by
// 1 / sqrt(hd), the table's softmax, the values summed (attn_accum) and divided by the softmax's sum.
void Encoder::attention(int tid, const Call& c, const EncoderLayer& L) {
  const int hd = cfg_.head_dim, nh = cfg_.n_head, group = cfg_.n_head / cfg_.n_head_kv;
  const int nq = nh * hd, W = L.qkv.width;
  const float scale = 1.f / std::sqrt(float(hd));
  const int32_t block0 = 0;
  float* base_scratch = scratch_.data() + size_t(tid) * scratch_per_thread_;
  std::atomic<int>& next = next_[size_t(5 * (&L - layers_.data()) + 1)];
  for (int it = next.fetch_add(1, std::memory_order_relaxed); it < c.n_seq * nh;
       it = next.fetch_add(1, std::memory_order_relaxed)) {
    const int s = it / nh, h = it % nh, kvh = h / group;
    const int t0 = c.seq_starts[s], n = c.seq_starts[s + 1] - t0;
    const float* base = qkv_.data() + size_t(t0) * W;     // the sequence's first row
    float* sc = base_scratch;                                // [kQueryTile][n] scores
    float* row = sc + size_t(kQueryTile) * n;                // [n] one dim of the keys, as float
    uint16_t* k16 = reinterpret_cast<uint16_t*>(row + n);    // [hd][n] keys, transposed
    uint16_t* v16 = k16 + size_t(hd) * n;                    // [n][hd] values
    for (int i = 0; i < hd; ++i) {
      for (int j = 0; j < n; ++j) row[j] = base[size_t(j) * W + L.k_off + kvh * hd + i];
      kernels_->f32_to_f16(row, k16 + size_t(i) * n, n);
    }
    for (int j = 0; j < n; ++j) kernels_->f32_to_f16(base + size_t(j) * W + L.v_off + kvh * hd, v16 + size_t(j) * hd, hd);
    for (int q0 = 0; q0 < n; q0 += kQueryTile) {
      const int rows = std::min(kQueryTile, n - q0);
      const float* q = base + size_t(q0) * W + L.q_off + h * hd;
      kernels_->attn_scores(q, W, rows, k16, &block0, n, hd, n, sc, n);
      float inv_sum[kQueryTile];
      for (int r = 0; r < rows; ++r) {
        float* p = sc + size_t(r) * n;
        for (int j = 0; j < n; ++j) p[j] *= scale;
        float mx;
        inv_sum[r] = 1.f / kernels_->softmax(p, n, &mx);
      }
      float* o = attn_.data() + size_t(t0 + q0) * nq + h * hd;
      kernels_->attn_accum(sc, n, rows, v16, &block0, n, hd, n, o, nq);
      for (int r = 0; r < rows; ++r)
        for (int i = 0; i < hd; ++i) o[size_t(r) * nq + i] *= inv_sum[r];
    }
  }
}

// out[s] = mean, first or last row of sequence s's hidden states, L2-normalized when asked.
void Encoder::pool(int tid, const Call& c) {
  const int D = cfg_.n_embd;
  int s0, s1;
  split_range(c.n_seq, tid, pool_->size(), &s0, &s1);
  for (int s = s0; s < s1; ++s) {
    const int t0 = c.seq_starts[s], t1 = c.seq_starts[s + 1];
    float* o = c.out + size_t(s) * D;
    if (cfg_.pooling == Pooling::Mean) {
      std::fill(o, o + D, 0.f);
      for (int t = t0; t < t1; ++t) {
        const float* x = x_.data() + size_t(t) * D;
        for (int i = 0; i < D; ++i) o[i] += x[i];
      }
      const float inv = 1.f / float(t1 - t0);
      for (int i = 0; i < D; ++i) o[i] *= inv;
    } else {
      const float* x = x_.data() + size_t(cfg_.pooling == Pooling::Cls ? t0 : t1 - 1) * D;
      std::copy(x, x + D, o);
    }
    if (c.normalize) {
      double ss = 0;
      for (int i = 0; i < D; ++i) ss += double(o[i]) * o[i];
      if (ss > 0) {
        const float inv = float(1.0 / std::sqrt(ss));
        for (int i = 0; i < D; ++i) o[i] *= inv;
      }
    }
  }
}

// Rerankers: each sequence's first row -> tanh(cls x + b) (when the file has cls) -> cls.output x + b:
// n_cls_out raw scores (logits, no sigmoid) per sequence.
void Encoder::rank_head(int tid, const Call& c) {
  const int D = cfg_.n_embd, S = c.n_seq, op = 5 * cfg_.n_layer;
  const bool dense = !cls_.parts.empty();
  int s0, s1;
  split_range(S, tid, pool_->size(), &s0, &s1);
  const MatrixGroup& first = dense ? cls_ : cls_out_;
  const bool q1 = first.any_quantized();
  for (int s = s0; s < s1; ++s) {
    const float* x = x_.data() + size_t(c.seq_starts[s]) * D;
    std::copy(x, x + D, head_.data() + size_t(s) * D);
    if (q1) kernels_->quantize_act(x, xq_.data() + size_t(s) * (D / QK), D, first.act_group());
  }
  pool_->barrier(tid);
  const float* in = head_.data();
  if (dense) {
    matmul(tid, op, cls_, cls_b_, head_.data(), xq_.data(), S, proj_.data(), cls_.width, kTanh);
    pool_->barrier(tid);
    if (cls_out_.any_quantized()) {
      quantize_rows(tid, proj_.data(), S, D, xq_.data(), cls_out_);
      pool_->barrier(tid);
    }
    in = proj_.data();
  }
  matmul(tid, op + 1, cls_out_, cls_out_b_, in, xq_.data(), S, scores_.data(), cls_out_.width, kNone);
  pool_->barrier(tid);
  for (int s = s0; s < s1; ++s)
    for (int k = 0; k < cfg_.n_cls_out; ++k) c.out[size_t(s) * cfg_.n_cls_out + k] = scores_[size_t(s) * cls_out_.width + k];
}

}  // namespace sysinfer
