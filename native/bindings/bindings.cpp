// Python bindings of the native core: sysinfer._native.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cctype>
#include <climits>
#include <cstring>
#include <tuple>
#include <stdexcept>
#include <string>
#include <vector>

#include "bandwidth.h"
#include "kernels.h"
#include "model.h"
#include "model_desc.h"
#include "numa.h"

namespace nb = nanobind;
using namespace sysinfer;

void bind_encoder(nb::module_& mod);  // encoder_bindings.cpp

namespace {

using I32 = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using I32x2 = nb::ndarray<const int32_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using Bytes = nb::ndarray<const uint8_t, nb::c_contig, nb::device::cpu>;
using F32 = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using F32Out = nb::ndarray<float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

template <class T>
T get(const nb::dict& d, const char* key, T fallback) {
  return d.contains(key) ? nb::cast<T>(d[key]) : fallback;
}

WType checked_type(int t) {
  if (!known_wtype(t)) throw std::invalid_argument("unsupported tensor type id " + std::to_string(t));
  return WType(t);
}

TensorDesc make_tensor_desc(Role role, int layer, int type, std::vector<int64_t> shape) {
  TensorDesc t;
  t.role = role;
  t.layer = layer;
  t.type = checked_type(type);
  if (shape.empty() || shape.size() > 3) throw std::invalid_argument(std::string(role_name(role)) + ": 1 to 3 dimensions");
  for (int64_t n : shape)
    if (n <= 0 || n > INT32_MAX) throw std::invalid_argument(std::string(role_name(role)) + ": dimensions must be in 1..2^31-1");
  t.shape = std::move(shape);
  return t;
}

// One layer's tensors (layer -1: the model-wide ones), in the order of Model::layer_tensors, each the
// file's bytes of that tensor.
void load(Model& m, int layer, const std::vector<Bytes>& data) {
  if (layer < -1 || layer >= m.config().n_layer) throw std::invalid_argument("load: no layer " + std::to_string(layer));
  const std::vector<int> index = m.layer_tensors(layer);
  if (data.size() != index.size())
    throw std::invalid_argument("load: layer " + std::to_string(layer) + " has " + std::to_string(index.size()) +
                                " tensors, got " + std::to_string(data.size()));
  std::vector<const uint8_t*> ptrs;
  for (size_t i = 0; i < index.size(); ++i) {
    const TensorDesc& t = m.config().tensors[index[i]];
    if (data[i].nbytes() != t.bytes())
      throw std::invalid_argument(std::string(role_name(t.role)) + " of layer " + std::to_string(layer) + ": expected " +
                                  std::to_string(t.bytes()) + " bytes, got " + std::to_string(data[i].nbytes()));
    ptrs.push_back(data[i].data());
  }
  nb::gil_scoped_release release;
  m.load(layer, ptrs);
}

void step(Model& m, I32 token_ids, I32 positions, I32 seq_starts, I32x2 block_tables, I32 context_lens,
          I32 logits_rows, F32Out logits) {
  StepBatch b;
  b.n_tok = int(token_ids.shape(0));
  b.n_seq = int(context_lens.shape(0));
  b.max_blocks = int(block_tables.shape(1));
  b.n_out = int(logits_rows.shape(0));
  if (positions.shape(0) != token_ids.shape(0)) throw std::invalid_argument("positions and token_ids differ in length");
  if (seq_starts.shape(0) != size_t(b.n_seq) + 1) throw std::invalid_argument("seq_starts must have n_seq + 1 entries");
  if (block_tables.shape(0) != size_t(b.n_seq)) throw std::invalid_argument("block_tables must have n_seq rows");
  if (logits.shape(0) < size_t(b.n_out) || logits.shape(1) != size_t(m.config().n_vocab))
    throw std::invalid_argument("logits must be [>= len(logits_rows), n_vocab]");
  b.token_ids = token_ids.data();
  b.positions = positions.data();
  b.seq_starts = seq_starts.data();
  b.block_tables = block_tables.data();
  b.context_lens = context_lens.data();
  b.logits_rows = logits_rows.data();
  nb::gil_scoped_release release;
  m.step(b, logits.data());
}

// Node plan from Python: [{"threads": n, "cpus": [...], "mem_node": k, "kv_heads": [a, b], "ff": [a, b],
// "vocab": [a, b], "down_rows": [a, b]}, ...] (sysinfer/topology.py makes it; down_rows, a MoE's cut of
// its experts' down, may be left out on one node).
std::vector<NodeSpec> nodes_from_list(const nb::list& nodes) {
  std::vector<NodeSpec> out;
  for (nb::handle h : nodes) {
    nb::dict d = nb::cast<nb::dict>(h);
    NodeSpec n;
    n.cpus = get(d, "cpus", std::vector<int>{});
    n.n_threads = get(d, "threads", int(n.cpus.size()));
    n.mem_node = get(d, "mem_node", -1);
    auto range = [&](const char* key, bool optional = false) {
      std::vector<int> r = get(d, key, optional ? std::vector<int>{0, 0} : std::vector<int>{});
      if (r.size() != 2) throw std::invalid_argument(std::string("node plan: ") + key + " must be [begin, end]");
      return std::make_pair(r[0], r[1]);
    };
    std::tie(n.share.kv0, n.share.kv1) = range("kv_heads");
    std::tie(n.share.ff0, n.share.ff1) = range("ff");
    std::tie(n.share.vocab0, n.share.vocab1) = range("vocab");
    std::tie(n.share.down0, n.share.down1) = range("down_rows", true);
    out.push_back(n);
  }
  return out;
}

const char* bind_name(BindStatus s) {
  return s == BindStatus::kBound ? "bound" : s == BindStatus::kFailed ? "failed" : "not bound";
}

// What each node holds and where its memory is: for `sysinfer info`, logs and the NUMA tests.
nb::list node_report(const Model& m) {
  nb::list out;
  for (const Node& n : m.nodes()) {
    nb::dict d;
    d["threads"] = n.n_threads;
    d["cpus"] = n.spec.cpus;
    d["mem_node"] = n.spec.mem_node;
    d["binding"] = std::string(bind_name(n.bind));
    d["kv_heads"] = std::vector<int>{n.kv0, n.kv0 + n.nkv};
    d["heads"] = std::vector<int>{n.head0, n.head0 + n.nh};
    d["ff"] = std::vector<int>{n.ff0, n.ff0 + n.nf};
    d["vocab"] = std::vector<int>{n.vocab0, n.vocab0 + n.nvocab};
    d["down_rows"] = std::vector<int>{n.dr0, n.dr0 + n.ndr};
    d["weight_bytes"] = n.weight_bytes;
    d["kv_bytes"] = n.kv_bytes;
    // OS node of the first page of its first weight slice and of its KV arena (move_pages(2)).
    const void* w = n.layers.empty() ? nullptr
                    : !n.layers[0].gate_up.parts.empty() ? static_cast<const void*>(n.layers[0].gate_up.parts[0].data.get())
                    : !n.layers[0].qkv.parts.empty() ? static_cast<const void*>(n.layers[0].qkv.parts[0].data.get()) : nullptr;
    d["weights_on"] = w ? node_of_address(w) : -1;
    d["kv_on"] = n.k_cache && n.kv_bytes ? node_of_address(n.k_cache.get()) : -1;
    out.append(d);
  }
  return out;
}

// Where every page of each node's memory is (move_pages(2) over all of it), for the NUMA tests:
// per node {"weights": {os_node: pages}, "kv": {os_node: pages}}; os_node -1 = unknown. Weights are
// the node's own slices (every layer's Q/K/V, output projection, gate/up and down, and its vocabulary
// rows when they are its own copy); kv is both its arenas.
nb::list page_report(const Model& m) {
  auto add = [](std::map<int, size_t>& into, const void* p, size_t bytes) {
    for (const auto& [node, pages] : page_nodes(p, bytes)) into[node] += pages;
  };
  auto add_matrix = [&](std::map<int, size_t>& into, const Matrix& x) {
    if (x.data) add(into, x.data.get(), packed_bytes(x.type, x.rows, x.cols));
  };
  nb::list out;
  for (const Node& n : m.nodes()) {
    std::map<int, size_t> weights, kv;
    {
      nb::gil_scoped_release release;
      for (const NodeLayer& L : n.layers) {
        for (const MatrixGroup* g : {&L.qkv, &L.wo, &L.gate_up, &L.down})
          for (const Matrix& x : g->parts) add_matrix(weights, x);
        for (const std::vector<MatrixGroup>* experts : {&L.exp_gate_up, &L.exp_down})  // MoE: the experts' arena
          for (const MatrixGroup& g : *experts)
            for (const Matrix& x : g.parts) add_matrix(weights, x);
      }
      if (n.output.data != m.token_embd().data) add_matrix(weights, n.output);  // not the shared embeddings
      if (n.kv_bytes) {
        add(kv, n.k_cache.get(), n.kv_bytes / 2);
        add(kv, n.v_cache.get(), n.kv_bytes / 2);
      }
    }
    nb::dict d;
    d["weights"] = weights;
    d["kv"] = kv;
    out.append(d);
  }
  return out;
}

const Kernels* kernels_by_name(const std::string& name) {
  const Kernels* all[8];
  const int n = compiled_tables(all, 8);
  for (int i = 0; i < n; ++i)
    if (name == all[i]->name) return all[i];
  throw std::invalid_argument("no kernel table named " + name + " in this build");
}

// y [n_tok, rows] = W x for a GGUF-layout matrix, through one kernel table: packs W, quantizes x
// (for quantized W) and runs gemm. For tests of the kernels against numpy; not a fast path.
nb::ndarray<nb::numpy, float, nb::ndim<2>> gemm_check(const std::string& table, int type, int rows, int cols,
                                                      Bytes data, nb::ndarray<const float, nb::ndim<2>, nb::c_contig> x) {
  const Kernels* k = kernels_by_name(table);
  const WType wt = checked_type(type);
  if (data.nbytes() != gguf_row_bytes(wt, cols) * size_t(rows)) throw std::invalid_argument("matrix byte size");
  if (int(x.shape(1)) != cols) throw std::invalid_argument("x must be [n_tok, cols]");
  const int n_tok = int(x.shape(0)), prow = padded_rows(rows);
  std::vector<uint8_t> packed(packed_bytes(wt, rows, cols));
  pack_matrix(wt, data.data(), rows, cols, packed.data());
  std::vector<ActBlock> xq(size_t(n_tok) * cols / QK);
  const bool quantized = !is_float_type(wt);
  if (quantized)
    for (int t = 0; t < n_tok; ++t) k->quantize_act(x.data() + size_t(t) * cols, xq.data() + size_t(t) * cols / QK, cols, act_group(wt));
  std::vector<float> y(size_t(n_tok) * prow);
  k->gemm(wt, packed.data(), cols, 0, prow / ROW_TILE, quantized ? static_cast<const void*>(xq.data()) : x.data(),
          n_tok, y.data(), prow);
  float* out = new float[size_t(n_tok) * rows];
  for (int t = 0; t < n_tok; ++t) std::copy(y.begin() + size_t(t) * prow, y.begin() + size_t(t) * prow + rows, out + size_t(t) * rows);
  nb::capsule owner(out, [](void* p) noexcept { delete[] static_cast<float*>(p); });
  return nb::ndarray<nb::numpy, float, nb::ndim<2>>(out, {size_t(n_tok), size_t(rows)}, owner);
}

// A GGUF-layout matrix back to float [rows, cols]: from its GGUF rows (packed = false) or after
// pack_matrix, from the tiles (packed = true). For tests against gguf-py's dequantize.
nb::ndarray<nb::numpy, float, nb::ndim<2>> dequantize_check(int type, int rows, int cols, Bytes data, bool packed) {
  const WType wt = checked_type(type);
  if (rows <= 0 || cols <= 0 || cols % block_elems(wt)) throw std::invalid_argument("matrix shape");
  if (data.nbytes() != gguf_row_bytes(wt, cols) * size_t(rows)) throw std::invalid_argument("matrix byte size");
  float* out = new float[size_t(rows) * cols];
  nb::capsule owner(out, [](void* p) noexcept { delete[] static_cast<float*>(p); });
  if (packed) {
    std::vector<uint8_t> tiles(packed_bytes(wt, rows, cols));
    pack_matrix(wt, data.data(), rows, cols, tiles.data());
    for (int r = 0; r < rows; ++r) dequantize_packed_row(wt, tiles.data(), cols, r, out + size_t(r) * cols);
  } else {
    for (int r = 0; r < rows; ++r)
      dequantize_gguf_row(wt, data.data() + gguf_row_bytes(wt, cols) * r, out + size_t(r) * cols, cols);
  }
  return nb::ndarray<nb::numpy, float, nb::ndim<2>>(out, {size_t(rows), size_t(cols)}, owner);
}

nb::dict cpu_info() {
  nb::dict d;
  const CpuFeatures f = detect_cpu_features();
  d["kernels"] = select_kernels().name;
  nb::list generic_types;  // GGML type ids the selected table runs through the generic kernel
  for (int t = 0; t < 64; ++t)
    if (known_wtype(t) && !select_kernels().own_gemm(WType(t))) generic_types.append(t);
  d["generic_types"] = generic_types;
  nb::list compiled, runnable;
  const Kernels* all[8];
  const int n = compiled_tables(all, 8);
  for (int i = 0; i < n; ++i) {
    compiled.append(all[i]->name);
    if (cpu_runs(*all[i], f)) runnable.append(all[i]->name);
  }
  d["compiled"] = compiled;
  d["runnable"] = runnable;  // the compiled tables this CPU runs
  d["avx2"] = f.avx2;
  d["avx512"] = f.avx512;
  d["fma"] = f.fma;
  d["f16c"] = f.f16c;
  d["neon"] = f.neon;
  d["dotprod"] = f.dotprod;
  d["i8mm"] = f.i8mm;
  return d;
}

}  // namespace

NB_MODULE(_native, mod) {
  mod.doc() = "sysinfer native core: packed weights, paged KV cache, one forward pass per step";
  mod.def("info", &cpu_info, "Kernel table in use and the CPU features it was chosen from.");
  mod.def(
      "read_bandwidth_gbs",
      [](size_t mib, int n_threads, int repeats) {
        nb::gil_scoped_release release;
        return read_bandwidth_gbs(mib << 20, n_threads, repeats);
      },
      nb::arg("mib"), nb::arg("n_threads"), nb::arg("repeats") = 3,
      "GB/s of reading a buffer of `mib` MiB with n_threads threads (a decode step's ceiling).");
  mod.def("gemm_check", &gemm_check, nb::arg("table"), nb::arg("type"), nb::arg("rows"), nb::arg("cols"),
          nb::arg("data"), nb::arg("x"), "y = W x through one kernel table (for tests).");
  mod.def("dequantize_check", &dequantize_check, nb::arg("type"), nb::arg("rows"), nb::arg("cols"), nb::arg("data"),
          nb::arg("packed"), "A GGUF-layout matrix back to float, from its rows or its packed tiles (for tests).");

  nb::enum_<Role> role(mod, "Role", "What a tensor is for (model_desc.h).");
  for (int r = 0; r < int(Role::kCount); ++r) {
    std::string name = role_name(Role(r));  // attn_q.bias -> ATTN_Q_BIAS
    for (char& c : name) c = c == '.' ? '_' : char(std::toupper(static_cast<unsigned char>(c)));
    role.value(strdup(name.c_str()), Role(r));  // names live as long as the module
  }
  nb::enum_<NormKind>(mod, "NormKind").value("RMS", NormKind::RMS).value("LAYER", NormKind::Layer);
  nb::enum_<Positions>(mod, "Positions")
      .value("ROPE", Positions::Rope).value("ALIBI", Positions::Alibi).value("ABSOLUTE", Positions::Absolute);
  nb::enum_<RopeStyle>(mod, "RopeStyle").value("PAIRS", RopeStyle::Pairs).value("HALVES", RopeStyle::Halves);
  nb::enum_<Pooling>(mod, "Pooling")
      .value("NONE", Pooling::None).value("MEAN", Pooling::Mean).value("CLS", Pooling::Cls)
      .value("LAST", Pooling::Last).value("RANK", Pooling::Rank);
  nb::enum_<FfnKind>(mod, "FfnKind").value("SWIGLU", FfnKind::SwiGLU).value("GELU", FfnKind::GELU).value("MOE", FfnKind::MoE);

  nb::class_<TensorDesc>(mod, "TensorDesc", "One tensor: its role, layer (-1: model-wide), GGML type id, GGUF shape.")
      .def(nb::new_(&make_tensor_desc), nb::arg("role"), nb::arg("layer"), nb::arg("type"), nb::arg("shape"))
      .def_ro("role", &TensorDesc::role)
      .def_ro("layer", &TensorDesc::layer)
      .def_prop_ro("type", [](const TensorDesc& t) { return int(t.type); })
      .def_ro("shape", &TensorDesc::shape)
      .def("__repr__", [](const TensorDesc& t) {
        std::string s = std::string("TensorDesc(") + role_name(t.role) + ", layer " + std::to_string(t.layer) + ", [";
        for (size_t i = 0; i < t.shape.size(); ++i) s += (i ? ", " : "") + std::to_string(t.shape[i]);
        return s + "])";
      });

  nb::class_<ModelDesc>(mod, "ModelDesc", "A model as data: hyperparameters, graph switches, every tensor (model_desc.h).")
      .def(nb::init<>())
      .def_rw("arch", &ModelDesc::arch)
      .def_rw("n_layer", &ModelDesc::n_layer)
      .def_rw("n_embd", &ModelDesc::n_embd)
      .def_rw("n_head", &ModelDesc::n_head)
      .def_rw("n_head_kv", &ModelDesc::n_head_kv)
      .def_rw("head_dim", &ModelDesc::head_dim)
      .def_rw("n_ff", &ModelDesc::n_ff)
      .def_rw("n_vocab", &ModelDesc::n_vocab)
      .def_rw("n_ctx", &ModelDesc::n_ctx)
      .def_rw("norm", &ModelDesc::norm)
      .def_rw("norm_eps", &ModelDesc::norm_eps)
      .def_rw("positions", &ModelDesc::positions)
      .def_rw("rope_style", &ModelDesc::rope_style)
      .def_rw("rope_dim", &ModelDesc::rope_dim)
      .def_rw("rope_base", &ModelDesc::rope_base)
      .def_rw("alibi_max_bias", &ModelDesc::alibi_max_bias)
      .def_rw("causal", &ModelDesc::causal)
      .def_rw("ffn", &ModelDesc::ffn)
      .def_rw("rope_freq_mul", &ModelDesc::rope_freq_mul)
      .def_rw("rope_mscale", &ModelDesc::rope_mscale)
      .def_rw("n_expert", &ModelDesc::n_expert)
      .def_rw("n_expert_used", &ModelDesc::n_expert_used)
      .def_rw("n_token_types", &ModelDesc::n_token_types)
      .def_rw("n_cls_out", &ModelDesc::n_cls_out)
      .def_rw("pooling", &ModelDesc::pooling)
      .def_rw("tensors", &ModelDesc::tensors)
      .def("check", &check_description, "Raises ValueError naming what is wrong with the description.");

  nb::class_<Model>(mod, "Model")
      .def("__init__",
           [](Model* self, const ModelDesc& desc, nb::list nodes) { new (self) Model(desc, nodes_from_list(nodes)); },
           nb::arg("desc"), nb::arg("nodes"), "Tensor parallel across the given nodes (see nodes_from_list).")
      .def("layer_tensors", &Model::layer_tensors, nb::arg("layer"),
           "Indices into desc.tensors of layer's tensors (-1: model-wide), the order load() takes them in.")
      .def("load", &load, nb::arg("layer"), nb::arg("data"), "Packs one layer's tensors (GIL released).")
      .def("finish_loading", &Model::finish_loading)
      .def("init_cache", &Model::init_cache, nb::arg("n_blocks"), nb::arg("block_size"),
           nb::arg("max_step_tokens"), nb::arg("max_out_rows"))
      .def("step", &step, nb::arg("token_ids"), nb::arg("positions"), nb::arg("seq_starts"),
           nb::arg("block_tables"), nb::arg("context_lens"), nb::arg("logits_rows"), nb::arg("logits"),
           "One forward pass for a batch (GIL released); writes logits[i] for token logits_rows[i].")
      .def_prop_ro("kernels", [](Model& m) { return std::string(m.kernels().name); })
      .def_prop_ro("n_threads", [](Model& m) { return m.pool().size(); })
      .def_prop_ro("pinned_cpus", [](Model& m) { return m.pool().pinned_cpus(); })
      .def_prop_ro("n_nodes", [](Model& m) { return int(m.nodes().size()); })
      .def("node_report", &node_report, "Per node: threads, CPUs, shares, bytes, binding, pages' OS node.")
      .def("page_report", &page_report, "Per node: OS node -> pages of its weight slices and KV arenas (move_pages).")
      .def_prop_ro("weight_bytes", &Model::weight_bytes)
      .def_prop_ro("kv_bytes", &Model::kv_bytes)
      .def_prop_ro("n_blocks", &Model::n_blocks)
      .def_prop_ro("block_size", &Model::block_size)
      .def_prop_ro("max_step_tokens", &Model::max_step_tokens)
      .def_prop_ro("moe_counts", &Model::moe_counts,
                   "MoE: (layer steps routed, experts they chose between them): the experts a step reads.");
  bind_encoder(mod);
}
