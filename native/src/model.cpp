#include "model.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <tuple>

#include "aligned_array.h"
#include "attention.h"
#include "numa.h"

namespace sysinfer {

namespace {

// [begin, end) of n items for thread tid of nt: contiguous, balanced.
inline void split_range(int n, int tid, int nt, int* begin, int* end) {
  *begin = int(int64_t(n) * tid / nt);
  *end = int(int64_t(n) * (tid + 1) / nt);
}

[[noreturn]] void bad_input(const std::string& what) { throw std::invalid_argument(what); }

int block_size_of(WType t) { return t == WType::Q6_K ? QK_K : (t == WType::F32 || t == WType::F16) ? 1 : QK; }

// Tokens per attention work item for prefill. Attention's softmax chunks (attention.h) hold at least
// kMinKeysPerChunk keys, more when the context would need more than kMaxKeyChunks of them (this bounds
// the split-K partials); the chunk size is fixed for a model, so it never depends on a step's shape.
constexpr int kAttnTokensPerItem = 32;
constexpr int kMinKeysPerChunk = 256;
constexpr int kMaxKeyChunks = 64;
constexpr int kAttnItemsPerThread = 4;  // split-K aims for this many items per thread
// Split-K is for sequences of at most this many tokens in a step (decode, and verify steps of 1 + k
// drafted tokens), and for at most this many such tokens in all; longer ones have items enough.
constexpr int kMaxSplitTokens = 16;
// Matmul work chunks (guided): each chunk is the tiles left / (threads * kChunksPerThread), never
// fewer than kMinChunkTiles (an even count: tile pairs stay whole).
constexpr int kChunksPerThread = 2;
constexpr int kMinChunkTiles = 8;

}  // namespace

void MatrixGroup::add(Matrix m) {
  offsets.push_back(width);
  width += padded_rows(m.rows);
  tiles += m.tiles();
  parts.push_back(std::move(m));
}

bool MatrixGroup::any_quantized() const {
  return std::any_of(parts.begin(), parts.end(), [](const Matrix& m) { return m.quantized(); });
}

bool MatrixGroup::any_float() const {
  return std::any_of(parts.begin(), parts.end(), [](const Matrix& m) { return !m.quantized(); });
}

namespace {
std::vector<NodeSpec> one_node(const ModelConfig& cfg, int n_threads, const std::vector<int>& cpus) {
  NodeSpec n;
  n.n_threads = n_threads < 1 ? 1 : n_threads;
  for (int i = 0; i < n.n_threads && !cpus.empty(); ++i) n.cpus.push_back(cpus[i % cpus.size()]);
  n.share = NodeShare{0, cfg.n_head_kv, 0, cfg.n_ff, 0, cfg.n_vocab};
  return {n};
}

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

Model::Model(const ModelConfig& cfg, int n_threads, const std::vector<int>& cpus)
    : Model(cfg, one_node(cfg, n_threads, cpus)) {}

Model::Model(const ModelConfig& cfg, const std::vector<NodeSpec>& specs)
    : cfg_(cfg), kernels_(&select_kernels()) {
  if (cfg.n_layer <= 0 || cfg.n_embd <= 0 || cfg.n_head <= 0 || cfg.n_head_kv <= 0 ||
      cfg.head_dim <= 0 || cfg.n_ff <= 0 || cfg.n_vocab <= 0 || cfg.n_ctx <= 0)
    bad_input("model config: every size must be positive");
  if (cfg.n_head % cfg.n_head_kv != 0) bad_input("model config: n_head must be a multiple of n_head_kv");
  if (cfg.use_rope && (cfg.rope_dim <= 0 || cfg.rope_dim > cfg.head_dim || cfg.rope_dim % 2))
    bad_input("model config: rope_dim must be even and at most head_dim");
  if (specs.empty()) bad_input("node plan: at least one node");
  check_cuts(specs, cfg.n_head_kv, 1, &NodeShare::kv0, &NodeShare::kv1, "KV head");
  check_cuts(specs, cfg.n_ff, QK, &NodeShare::ff0, &NodeShare::ff1, "FFN column");
  check_cuts(specs, cfg.n_vocab, ROW_TILE, &NodeShare::vocab0, &NodeShare::vocab1, "vocabulary row");
  layers_.resize(cfg.n_layer);
  const int group = cfg.n_head / cfg.n_head_kv;
  std::vector<int> sizes, cpus;
  bool pinned = true;
  nodes_.resize(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    Node& n = nodes_[i];
    n.spec = specs[i];
    const NodeShare& s = specs[i].share;
    n.kv0 = s.kv0;
    n.nkv = s.kv1 - s.kv0;
    n.head0 = s.kv0 * group;
    n.nh = n.nkv * group;
    n.ff0 = s.ff0;
    n.nf = s.ff1 - s.ff0;
    n.vocab0 = s.vocab0;
    n.nvocab = s.vocab1 - s.vocab0;
    if (specs.size() > 1 && (n.nh * cfg.head_dim) % QK) bad_input("node plan: node " + std::to_string(i) +
        "'s query heads must span whole blocks of 32 columns (cut KV heads in larger groups)");
    n.n_threads = std::max(1, specs[i].n_threads);
    n.thread0 = int(cpus.size());
    sizes.push_back(n.n_threads);
    for (int t = 0; t < n.n_threads; ++t)
      cpus.push_back(specs[i].cpus.empty() ? -1 : specs[i].cpus[t % specs[i].cpus.size()]);
    pinned = pinned && !specs[i].cpus.empty();
    n.layers.resize(cfg.n_layer);
  }
  if (!pinned) cpus.clear();
  pool_ = std::make_unique<ThreadPool>(sizes, cpus);
  if (cfg.use_rope) {
    inv_freq_.resize(cfg.rope_dim / 2);
    for (int i = 0; i < cfg.rope_dim / 2; ++i)
      inv_freq_[i] = std::pow(cfg.rope_base, -2.f * i / cfg.rope_dim);
  } else {
    // ALiBi slopes: geometric in the nearest power of two of the head count, interleaved beyond.
    const int n = cfg.n_head;
    const int pow2 = 1 << int(std::floor(std::log2(double(n))));
    const float m0 = std::pow(2.f, -cfg.alibi_max_bias / pow2);
    const float m1 = std::pow(2.f, -cfg.alibi_max_bias / 2.f / pow2);
    alibi_slopes_.resize(n);
    for (int h = 0; h < n; ++h)
      alibi_slopes_[h] = h < pow2 ? std::pow(m0, float(h + 1)) : std::pow(m1, float(2 * (h - pow2) + 1));
  }
}

Model::~Model() = default;

Matrix Model::make_matrix(WType type, int rows, int cols, const uint8_t* gguf_data, Node* owner) {
  if (rows <= 0 || cols <= 0) bad_input("matrix with an empty dimension");
  if (cols % block_size_of(type) || cols % QK)
    bad_input("matrix columns must be a multiple of 32 and of the type's block size");
  Matrix m;
  m.type = type;
  m.rows = rows;
  m.cols = cols;
  const size_t bytes = packed_bytes(type, rows, cols);
  BindStatus st = BindStatus::kNotAsked;
  m.data = node_array<uint8_t>(bytes, owner ? owner->spec.mem_node : -1, &st);
  pack_matrix(type, gguf_data, rows, cols, m.data.get());
  weight_bytes_ += bytes;
  if (owner) {
    owner->weight_bytes += bytes;
    owner->bind = std::max(owner->bind, st);
  }
  return m;
}

namespace {
// Matrix groups of a layer, in the order of Layer::rows_seen.
enum { kQKV = 0, kWO = 1, kGateUp = 2, kDown = 3 };
}  // namespace

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

void Model::add_matrix(const std::string& name, WType type, int rows, int cols, const uint8_t* data) {
  if (name == "token_embd") {
    token_embd_ = make_matrix(type, rows, cols, data, nullptr);
    return;
  }
  if (name == "output") {
    if (rows != cfg_.n_vocab || cols != cfg_.n_embd) bad_input("output: wrong shape");
    const size_t row_bytes = gguf_row_bytes(type, cols);
    for (Node& n : nodes_)
      if (n.nvocab > 0) n.output = make_matrix(type, n.nvocab, cols, data + size_t(n.vocab0) * row_bytes, &n);
    output_.type = type;
    output_.rows = rows;
    output_.cols = cols;
    has_output_ = true;
    return;
  }
  int layer = -1;
  char part[32] = {0};
  if (std::sscanf(name.c_str(), "blk.%d.%31s", &layer, part) != 2 || layer < 0 || layer >= cfg_.n_layer)
    bad_input("unknown matrix name: " + name);
  const std::string p(part);
  const int group = p == "qkv" ? kQKV : p == "wo" ? kWO : p == "gate_up" ? kGateUp : p == "down" ? kDown : -1;
  if (group < 0) bad_input("unknown matrix name: " + name);
  if (rows <= 0 || cols <= 0) bad_input(name + ": empty matrix");
  const int want_cols = group == kQKV || group == kGateUp ? cfg_.n_embd : group == kWO ? cfg_.n_head * cfg_.head_dim : cfg_.n_ff;
  if (cols != want_cols) bad_input("layer " + std::to_string(layer) + " " + p + ": wrong input width");
  if (cols % block_size_of(type) || cols % QK)
    bad_input("matrix columns must be a multiple of 32 and of the type's block size");
  add_layer_matrix(layer, group, type, rows, cols, data);
}

void Model::set_vector(const std::string& name, const float* data, int n) {
  std::vector<float> v(data, data + n);
  if (name == "output_norm") { output_norm_ = std::move(v); return; }
  if (name == "rope_freqs") { rope_freqs_ = std::move(v); return; }
  int layer = -1;
  char part[32] = {0};
  if (std::sscanf(name.c_str(), "blk.%d.%31s", &layer, part) != 2 || layer < 0 || layer >= cfg_.n_layer)
    bad_input("unknown vector name: " + name);
  const std::string p(part);
  if (p == "attn_norm") layers_[layer].attn_norm = std::move(v);
  else if (p == "ffn_norm") layers_[layer].ffn_norm = std::move(v);
  else bad_input("unknown vector name: " + name);
}

static void check_group(const MatrixGroup& g, int want_rows, int want_cols, const std::string& what) {
  int rows = 0;
  for (const Matrix& m : g.parts) {
    if (m.cols != want_cols) bad_input(what + ": wrong input width");
    rows += m.rows;
  }
  if (rows != want_rows || (want_rows > 0 && g.parts.empty())) bad_input(what + ": missing or wrong output size");
}

void Model::finish_loading() {
  const int D = cfg_.n_embd, hd = cfg_.head_dim, F = cfg_.n_ff;
  if (token_embd_.rows != cfg_.n_vocab || token_embd_.cols != D) bad_input("token_embd: wrong shape");
  if (!has_output_) {  // tied embeddings: each node takes its rows of the packed token_embd
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
    if (L.rows_seen[kGateUp] != 2 * F) bad_input(at + " gate_up: missing or wrong output size");
    if (L.rows_seen[kDown] != D) bad_input(at + " down: missing or wrong output size");
    for (size_t ni = 0; ni < nodes_.size(); ++ni) {
      const Node& n = nodes_[ni];
      const NodeLayer& NL = n.layers[l];
      const std::string nat = at + " node " + std::to_string(ni);
      check_group(NL.qkv, (n.nh + 2 * n.nkv) * hd, D, nat + " qkv");
      check_group(NL.wo, n.nh ? D : 0, n.nh * hd, nat + " wo");
      check_group(NL.gate_up, 2 * n.nf, D, nat + " gate_up");
      check_group(NL.down, n.nf ? D : 0, n.nf, nat + " down");
      if (n.nh && (NL.q_off < 0 || NL.k_off < 0 || NL.v_off < 0)) bad_input(nat + ": q/k/v split");
      if (n.nf && NL.up_off < 0) bad_input(nat + ": gate/up split");
    }
  }
  for (size_t ni = 0; ni < nodes_.size(); ++ni) {
    const Node& n = nodes_[ni];
    if (n.nvocab && (n.output.rows != n.nvocab || n.output.cols != D)) bad_input("output: wrong shape");
  }
  if (has_output_ && (output_.rows != cfg_.n_vocab || output_.cols != D)) bad_input("output: wrong shape");
}

void Model::init_cache(int n_blocks, int block_size, int max_step_tokens, int max_out_rows) {
  if (n_blocks <= 0 || block_size <= 0 || max_step_tokens <= 0 || max_out_rows <= 0)
    bad_input("init_cache: sizes must be positive");
  if (max_out_rows > max_step_tokens) bad_input("init_cache: max_out_rows must not exceed max_step_tokens");
  const int D = cfg_.n_embd, hd = cfg_.head_dim, T = max_step_tokens;
  n_blocks_ = n_blocks;
  block_size_ = block_size;
  max_step_tokens_ = T;
  max_out_rows_ = max_out_rows;
  kv_bytes_ = 0;
  // Softmax chunk: a whole number of blocks, at least kMinKeysPerChunk keys, at most kMaxKeyChunks of
  // them in the longest context.
  const int min_chunk = std::max(kMinKeysPerChunk, (cfg_.n_ctx + kMaxKeyChunks - 1) / kMaxKeyChunks);
  key_chunk_ = (min_chunk + block_size - 1) / block_size * block_size;
  const int max_chunks = (cfg_.n_ctx + key_chunk_ - 1) / key_chunk_;
  for (Node& n : nodes_) {
    const int mem = n.spec.mem_node;
    BindStatus st = BindStatus::kNotAsked;
    auto note = [&] { n.bind = std::max(n.bind, st); };
    const size_t kv_elems = size_t(cfg_.n_layer) * n_blocks * n.nkv * block_size * hd;
    n.k_cache = node_array<uint16_t>(kv_elems, mem, &st); note();
    n.v_cache = node_array<uint16_t>(kv_elems, mem, &st); note();
    n.kv_bytes = 2 * kv_elems * sizeof(uint16_t);
    kv_bytes_ += n.kv_bytes;
    int qkv_w = 0, gu_w = 0;
    for (const NodeLayer& L : n.layers) {
      qkv_w = std::max(qkv_w, L.qkv.width);
      gu_w = std::max(gu_w, L.gate_up.width);
    }
    const int A = n.nh * hd;
    n.qkv = node_array<float>(size_t(T) * std::max(qkv_w, 1), mem, &st); note();
    n.attn = node_array<float>(size_t(T) * std::max(A, 1), mem, &st); note();
    n.xq = node_array<ActBlock>(size_t(T) * std::max({A, n.nf, QK}) / QK, mem, &st); note();
    n.gate_up = node_array<float>(size_t(T) * std::max(gu_w, 1), mem, &st); note();
    n.act = node_array<float>(size_t(T) * std::max(n.nf, 1), mem, &st); note();
    n.part = node_array<float>(size_t(T) * D, mem, &st); note();
    n.max_chunks = max_chunks;
    n.attn_next.reset(new std::atomic<int>[cfg_.n_layer]);
    n.matmul_next.reset(new std::atomic<int>[4 * cfg_.n_layer + 1]);
    n.attn_partial.assign(size_t(kMaxSplitTokens) * std::max(n.nh, 1) * n.max_chunks * (hd + 2), 0.f);
    if (n.nkv > 0) {
      AttnShape shape{n.nh, n.nkv, hd, block_size, n_blocks, 0.f, nullptr, key_chunk_};
      n.attn_scratch_per_thread = (attention_scratch_floats(shape, kAttnTokensPerItem) + 15) / 16 * 16;
    }
    n.attn_scratch.assign(n.attn_scratch_per_thread * n.n_threads, 0.f);
    // Worst case: every token its own sequence with every split, or prefill chunks of every head.
    n.attn_items.reserve(size_t(n.nkv) * (T + kMaxSplitTokens * n.max_chunks));
    n.split_tokens.reserve(kMaxSplitTokens);
  }
  x_.assign(size_t(T) * D, 0.f);
  xn_.assign(size_t(T) * D, 0.f);
  xq_.assign(size_t(T) * D / QK, ActBlock{});
  out_rows_.assign(size_t(max_out_rows) * D, 0.f);
  rope_cs_.assign(size_t(T) * std::max(cfg_.rope_dim, 1), 0.f);
  logits_pad_.assign(size_t(max_out_rows) * padded_rows(cfg_.n_vocab), 0.f);
  cache_ready_ = true;
}

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

void Model::plan_attention(Node& n, const StepBatch& b) {
  n.attn_items.clear();
  n.split_tokens.clear();
  for (int l = 0; l < cfg_.n_layer; ++l) n.attn_next[l].store(0, std::memory_order_relaxed);
  if (n.nkv == 0) return;
  // Short sequences (decode, verify) give few items (one per KV head): split their keys, at chunk
  // boundaries, so that every thread of the node gets several items. Which sequences split and into
  // how many items only decides who computes which chunk: results are the same (attention.h).
  auto splittable = [&](int s, int* budget) {
    const int len = b.seq_starts[s + 1] - b.seq_starts[s];
    if (len > *budget) return false;
    *budget -= len;
    return true;
  };
  int n_short = 0, budget = kMaxSplitTokens;
  for (int s = 0; s < b.n_seq; ++s) n_short += splittable(s, &budget);
  const int wanted = n_short == 0 ? 1 : (kAttnItemsPerThread * n.n_threads + n.nkv * n_short - 1) / (n.nkv * n_short);
  budget = kMaxSplitTokens;
  for (int s = 0; s < b.n_seq; ++s) {
    const int t0 = b.seq_starts[s], t1 = b.seq_starts[s + 1], ctx = b.context_lens[s];
    const int n_chunks = (ctx + key_chunk_ - 1) / key_chunk_;
    const int splits = splittable(s, &budget) ? std::min(n_chunks, wanted) : 1;
    if (splits > 1) {
      const int partial_row = int(n.split_tokens.size());
      for (int t = t0; t < t1; ++t) n.split_tokens.push_back({t, n_chunks});
      for (int h = 0; h < n.nkv; ++h)  // the node's own KV heads, numbered from 0
        for (int p = 0; p < splits; ++p) {
          const int c0 = n_chunks * p / splits, c1 = n_chunks * (p + 1) / splits;
          n.attn_items.push_back({s, h, t0, t1, c0 * key_chunk_, std::min(ctx, c1 * key_chunk_), p, partial_row});
        }
      continue;
    }
    for (int h = 0; h < n.nkv; ++h)
      for (int c = t0; c < t1; c += kAttnTokensPerItem)
        n.attn_items.push_back({s, h, c, std::min(t1, c + kAttnTokensPerItem), 0, ctx, -1, -1});
  }
  // Threads take items dynamically, the costliest (most keys) first, so the last ones are short.
  // (std::sort: no allocation inside a step; the order never changes a result, only who does what.)
  auto cost = [&](const AttnItem& it) {
    const int keys = std::min(it.key_end, b.positions[it.tok_end - 1] + 1) - it.key_begin;
    return int64_t(it.tok_end - it.tok_begin) * keys;
  };
  std::sort(n.attn_items.begin(), n.attn_items.end(), [&](const AttnItem& x, const AttnItem& y) {
    const int64_t cx = cost(x), cy = cost(y);
    return cx != cy ? cx > cy : std::tie(x.seq, x.kv_head, x.tok_begin, x.split) < std::tie(y.seq, y.kv_head, y.tok_begin, y.split);
  });
}

void Model::step(const StepBatch& b, float* logits) {
  validate(b);
  for (Node& n : nodes_) {
    plan_attention(n, b);
    for (int i = 0; i < 4 * cfg_.n_layer + 1; ++i) n.matmul_next[i].store(0, std::memory_order_relaxed);
  }
  auto task = [&](int tid) { forward(tid, b, logits); };
  pool_->run(task);
}

// Calls f(tile0, tile1) for chunks of tiles [0, n_tiles) of matmul number `op` of this step on node
// n, each chunk taken by whichever of the node's threads is free (an atomic counter per matmul and
// node, reset every step): on a shared machine a core slowed by a neighbour no longer holds the
// others at the next barrier. A chunk is a contiguous run of tiles, so each thread still streams
// weights sequentially; which thread computes a tile never changes its result.
//
// Chunks shrink as the matmul runs (guided scheduling: a share of what is left), so the last ones
// are small and the threads reach the next barrier together. With fixed chunks of a quarter of a
// thread's share, a prefill of the 8B shape left one thread waiting up to a whole chunk at the end
// of every matmul (128 tokens through the down matrix: ~3 ms a chunk), ~10 % of the step in
// `perf` (docs/benchmarks.md, "Prefill on the AVX-512 table").
template <class F>
void Model::for_tile_chunks(Node& n, int op, int n_tiles, const F& f) {
  std::atomic<int>& next = n.matmul_next[op];
  const int share = n.n_threads * kChunksPerThread;
  int c = next.load(std::memory_order_relaxed);
  while (c < n_tiles) {
    int chunk = std::max(kMinChunkTiles, (n_tiles - c) / share);
    chunk += chunk & 1;  // even: a chunk starts on an even tile, so pairs of tiles stay together
    if (!next.compare_exchange_weak(c, c + chunk, std::memory_order_relaxed)) continue;  // c reloaded
    f(c, std::min(n_tiles, c + chunk));
    c = next.load(std::memory_order_relaxed);
  }
}

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
                          bool quantize) {
  const int D = cfg_.n_embd;
  int r0, r1;
  split_range(n_rows, tid, pool_->size(), &r0, &r1);
  for (int r = r0; r < r1; ++r) {
    const float* xr = x + size_t(r) * D;
    float* o = out + size_t(r) * D;
    double ss = 0;
    for (int i = 0; i < D; ++i) ss += double(xr[i]) * xr[i];
    const float scale = 1.f / std::sqrt(float(ss / D) + cfg_.rms_eps);
    for (int i = 0; i < D; ++i) o[i] = xr[i] * scale * w[i];
    if (quantize) kernels_->quantize_act(o, outq + size_t(r) * (D / QK), D);
  }
}

// The reduction across nodes: x[t] += every node's partial sum (of wo if add_attn, of down if
// add_ffn), node after node in a fixed order; then, with w, the next norm of the row into xn_ / xq_.
// Rows are split across all threads: each row is read from every node's memory once.
void Model::reduce_and_norm(int tid, const float* w, bool add_attn, bool add_ffn, bool quantize, int n_tok) {
  const int D = cfg_.n_embd;
  int r0, r1;
  split_range(n_tok, tid, pool_->size(), &r0, &r1);
  for (int r = r0; r < r1; ++r) {
    float* xr = x_.data() + size_t(r) * D;
    for (const Node& n : nodes_) {
      if (!(add_attn && n.nh) && !(add_ffn && n.nf)) continue;
      const float* p = n.part.get() + size_t(r) * D;
      for (int i = 0; i < D; ++i) xr[i] += p[i];
    }
    if (!w) continue;
    float* o = xn_.data() + size_t(r) * D;
    double ss = 0;
    for (int i = 0; i < D; ++i) ss += double(xr[i]) * xr[i];
    const float scale = 1.f / std::sqrt(float(ss / D) + cfg_.rms_eps);
    for (int i = 0; i < D; ++i) o[i] = xr[i] * scale * w[i];
    if (quantize) kernels_->quantize_act(o, xq_.data() + size_t(r) * (D / QK), D);
  }
}

// RoPE on this step's q and k of node n's heads (adjacent pairs), then k and v into the node's
// paged cache as fp16. The node's threads split the tokens.
void Model::rope_and_store_kv(Node& n, int rank, int layer, const StepBatch& b) {
  const int hd = cfg_.head_dim, nq = n.nh, nkv = n.nkv;
  const NodeLayer& L = n.layers[layer];
  const int W = L.qkv.width;
  int t0, t1;
  split_range(b.n_tok, rank, n.n_threads, &t0, &t1);
  uint16_t* kc = n.k_cache.get() + size_t(layer) * n_blocks_ * nkv * block_size_ * hd;
  uint16_t* vc = n.v_cache.get() + size_t(layer) * n_blocks_ * nkv * block_size_ * hd;
  int s = 0;
  for (int t = t0; t < t1; ++t) {
    while (b.seq_starts[s + 1] <= t) ++s;
    float* row = n.qkv.get() + size_t(t) * W;
    if (cfg_.use_rope) {
      const float* cs = rope_cs_.data() + size_t(t) * cfg_.rope_dim;
      for (int h = 0; h < nq + nkv; ++h) {
        float* v = row + (h < nq ? L.q_off + h * hd : L.k_off + (h - nq) * hd);
        for (int i = 0; i < cfg_.rope_dim / 2; ++i) {
          const float c = cs[2 * i], sn = cs[2 * i + 1], a = v[2 * i], bb = v[2 * i + 1];
          v[2 * i] = a * c - bb * sn;
          v[2 * i + 1] = a * sn + bb * c;
        }
      }
    }
    const int pos = b.positions[t];
    const int blk = b.block_tables[size_t(s) * b.max_blocks + pos / block_size_];
    const int slot = pos % block_size_;
    for (int h = 0; h < nkv; ++h) {
      const size_t head_base = (size_t(h) * n_blocks_ + blk) * block_size_ * hd;
      kernels_->f32_to_f16(row + L.v_off + h * hd, vc + head_base + size_t(slot) * hd, hd);
      // Keys are stored transposed ([hd][bs]): converted 64 at a time by the table's vector
      // conversion (the same round-to-nearest-even as fp32_to_fp16), then scattered to their rows.
      const float* key = row + L.k_off + h * hd;
      uint16_t k16[64];
      for (int i0 = 0; i0 < hd; i0 += 64) {
        const int n16 = std::min(64, hd - i0);
        kernels_->f32_to_f16(key + i0, k16, n16);
        for (int i = 0; i < n16; ++i) kc[head_base + size_t(i0 + i) * block_size_ + slot] = k16[i];
      }
    }
  }
}

// Node n's attention items: its query heads against its KV arena; ALiBi slopes of its heads.
void Model::attention(Node& n, int rank, int layer, const StepBatch& b) {
  const int hd = cfg_.head_dim, nkv = n.nkv;
  const NodeLayer& L = n.layers[layer];
  const AttnShape shape{n.nh, nkv, hd, block_size_, n_blocks_, 1.f / std::sqrt(float(hd)),
                        cfg_.use_rope ? nullptr : alibi_slopes_.data() + n.head0, key_chunk_};
  const size_t layer_elems = size_t(n_blocks_) * nkv * block_size_ * hd;
  const uint16_t* kc = n.k_cache.get() + size_t(layer) * layer_elems;
  const uint16_t* vc = n.v_cache.get() + size_t(layer) * layer_elems;
  float* scratch = n.attn_scratch.data() + size_t(rank) * n.attn_scratch_per_thread;
  const int n_items = int(n.attn_items.size());
  for (int i = n.attn_next[layer].fetch_add(1, std::memory_order_relaxed); i < n_items;
       i = n.attn_next[layer].fetch_add(1, std::memory_order_relaxed)) {
    const AttnItem& it = n.attn_items[i];
    run_attention_item(*kernels_, shape, it, n.qkv.get() + L.q_off, L.qkv.width, b.positions,
                       b.block_tables + size_t(it.seq) * b.max_blocks, kc, vc, scratch, n.attn.get(),
                       n.nh * hd, n.attn_partial.data(), n.max_chunks);
  }
}

void Model::combine_partials(Node& n, int rank) {
  const int hd = cfg_.head_dim, nh = n.nh;
  const int count = int(n.split_tokens.size()) * nh;
  int i0, i1;
  split_range(count, rank, n.n_threads, &i0, &i1);
  for (int i = i0; i < i1; ++i) {
    const int t = n.split_tokens[i / nh].first, chunks = n.split_tokens[i / nh].second, h = i % nh;
    const float* part = n.attn_partial.data() + (size_t(i / nh) * nh + h) * n.max_chunks * (hd + 2);
    combine_attention_partials(part, chunks, hd, n.attn.get() + size_t(t) * nh * hd + size_t(h) * hd);
  }
}

// SwiGLU of node n's FFN columns, a = silu(gate) * up (the input of its down slice), quantized for
// it where it takes Q8_0 blocks. The node's threads split the [T][nf / 32] blocks, not the tokens:
// a decode step's one token would leave every thread but one waiting.
void Model::swiglu(Node& n, int rank, const NodeLayer& L, int n_tok) {
  const int F = n.nf, blocks_per_tok = F / QK;
  const bool quantize = L.down.any_quantized();
  int b0, b1;
  split_range(n_tok * blocks_per_tok, rank, n.n_threads, &b0, &b1);
  for (int blk = b0; blk < b1; ++blk) {  // block blk: token t, columns [i0, i0 + QK); xq[blk] in [T][nf / QK]
    const int t = blk / blocks_per_tok, i0 = (blk % blocks_per_tok) * QK;
    const float* g = n.gate_up.get() + size_t(t) * L.gate_up.width;  // [gate | up] row of token t
    float* a = n.act.get() + size_t(t) * F;
    for (int i = i0; i < i0 + QK; ++i) a[i] = g[i] / (1.f + std::exp(-g[i])) * g[L.up_off + i];
    if (quantize) kernels_->quantize_act(a + i0, n.xq.get() + blk, QK);
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
    if (cfg_.use_rope) {
      float* cs = rope_cs_.data() + size_t(t) * cfg_.rope_dim;
      for (int i = 0; i < cfg_.rope_dim / 2; ++i) {
        const float angle = float(b.positions[t]) * inv_freq_[i];
        cs[2 * i] = std::cos(angle);
        cs[2 * i + 1] = std::sin(angle);
      }
    }
  }
  pool_->barrier(tid);
  rms_norm_rows(tid, x_.data(), layers_[0].attn_norm.data(), T, xn_.data(), xq_.data(), true);
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
          kernels_->quantize_act(n.attn.get() + size_t(t) * A, n.xq.get() + size_t(t) * (A / QK), A);
      pool_->group_barrier(tid);
      matmul(n, op + 1, L.wo, n.attn.get(), n.xq.get(), T, n.part.get(), D);
    }
    op += 2;
    pool_->barrier(tid);
    // x += every node's attention output; the FFN norm of the result.
    reduce_and_norm(tid, layers_[l].ffn_norm.data(), true, false, true, T);
    pool_->barrier(tid);
    if (ffn_here) {
      matmul(n, op, L.gate_up, xn_.data(), xq_.data(), T, n.gate_up.get(), L.gate_up.width);
      pool_->group_barrier(tid);
      swiglu(n, rank, L, T);
      pool_->group_barrier(tid);
      matmul(n, op + 1, L.down, n.act.get(), n.xq.get(), T, n.part.get(), D);
    }
    op += 2;
    pool_->barrier(tid);
    // x += every node's FFN output; the next layer's attention norm (none after the last layer).
    const bool last = l + 1 == cfg_.n_layer;
    reduce_and_norm(tid, last ? nullptr : layers_[l + 1].attn_norm.data(), false, true, true, T);
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
  rms_norm_rows(tid, out_rows_.data(), output_norm_.data(), b.n_out, xn_.data(), xq_.data(), true);
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
