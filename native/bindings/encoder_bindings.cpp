// Python bindings of the encoder (native/src/encoder.h): sysinfer._native.Encoder.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "encoder.h"

namespace nb = nanobind;
using namespace sysinfer;

namespace {

using I32 = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Bytes = nb::ndarray<const uint8_t, nb::c_contig, nb::device::cpu>;
using F32Out = nb::ndarray<float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

void load(Encoder& e, int layer, const std::vector<Bytes>& data) {
  if (layer < -1 || layer >= e.config().n_layer) throw std::invalid_argument("load: no layer " + std::to_string(layer));
  const std::vector<int> index = e.layer_tensors(layer);
  if (data.size() != index.size()) throw std::invalid_argument("load: layer " + std::to_string(layer) + ": wrong tensor count");
  std::vector<const uint8_t*> ptrs;
  for (size_t i = 0; i < index.size(); ++i) {
    const TensorDesc& t = e.config().tensors[size_t(index[i])];
    if (data[i].nbytes() != t.bytes())
      throw std::invalid_argument(std::string(role_name(t.role)) + " of layer " + std::to_string(layer) + ": expected " +
                                  std::to_string(t.bytes()) + " bytes, got " + std::to_string(data[i].nbytes()));
    ptrs.push_back(data[i].data());
  }
  nb::gil_scoped_release release;
  e.load(layer, ptrs);
}

void run(Encoder& e, I32 tokens, I32 seq_starts, bool normalize, F32Out out) {
  const int n_tok = int(tokens.shape(0)), n_seq = int(seq_starts.shape(0)) - 1;
  if (n_seq < 1) throw std::invalid_argument("seq_starts needs at least 2 entries");
  if (out.shape(0) != size_t(n_seq) || out.shape(1) != size_t(e.out_width()))
    throw std::invalid_argument("out must be [n_seq, " + std::to_string(e.out_width()) + "]");
  nb::gil_scoped_release release;
  e.run(tokens.data(), n_tok, seq_starts.data(), n_seq, normalize, out.data());
}

}  // namespace

void bind_encoder(nb::module_& mod) {
  mod.def("check_encoder_description", &check_encoder_description, nb::arg("desc"),
          "Raises ValueError naming what is wrong with an encoder's description.");
  mod.def("encoder_gelu", &encoder_gelu, nb::arg("x"), "The encoder's GELU of one value (for tests).");
  nb::class_<Encoder>(mod, "Encoder", "An encoder model (BERT / XLM-R): one call per batch of whole sequences.")
      .def(nb::init<const ModelDesc&, int, const std::vector<int>&>(), nb::arg("desc"), nb::arg("n_threads"),
           nb::arg("cpus"))
      .def("layer_tensors", &Encoder::layer_tensors, nb::arg("layer"))
      .def("load", &load, nb::arg("layer"), nb::arg("data"), "Packs one layer's tensors (GIL released).")
      .def("finish_loading", &Encoder::finish_loading)
      .def("reserve", &Encoder::reserve, nb::arg("max_tokens"), "Sizes the arenas: at most max_tokens per run.")
      .def("run", &run, nb::arg("tokens"), nb::arg("seq_starts"), nb::arg("normalize"), nb::arg("out"),
           "Pooled vectors (or rank scores) of the sequences laid end to end in tokens (GIL released).")
      .def_prop_ro("out_width", &Encoder::out_width)
      .def_prop_ro("max_tokens", &Encoder::max_tokens)
      .def_prop_ro("n_threads", &Encoder::n_threads)
      .def_prop_ro("kernels", [](const Encoder& e) { return std::string(e.kernels().name); })
      .def_prop_ro("weight_bytes", &Encoder::weight_bytes)
      .def_prop_ro("arena_bytes", &Encoder::arena_bytes);
}
