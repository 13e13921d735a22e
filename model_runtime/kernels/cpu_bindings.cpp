// The Python module of the CPU kernels: what each source file exports.

#include <torch/extension.h>

#include "cpu_decoder.h"

namespace atenea {

// cpu_blockq.cpp
torch::Tensor linear_cpu(const torch::Tensor& x, int64_t format, const torch::Tensor& q, const torch::Tensor& d,
                         const torch::Tensor& m, const c10::optional<torch::Tensor>& bias, int64_t n);
// cpu_attention.cpp
torch::Tensor paged_decode_cpu(const torch::Tensor& q, const torch::Tensor& keys, const torch::Tensor& values,
                               const torch::Tensor& block_tables, const torch::Tensor& context_lens,
                               int64_t block_size, double scale);
// cpu_elementwise.cpp
torch::Tensor rms_norm_cpu(const torch::Tensor& x, const torch::Tensor& weight, double eps);
torch::Tensor silu_mul_cpu(const torch::Tensor& gate_up);
void rope_cpu(torch::Tensor& qkv, const torch::Tensor& cos, const torch::Tensor& sin, int64_t heads);
// cpu_sampling.cpp
torch::Tensor argmax_rows_cpu(const torch::Tensor& x);

}  // namespace atenea

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  using namespace atenea;
  // Without the GIL: a prefill's linears run for up to a second, and the server's event loop must
  // keep answering (streams, health checks, fast 429s) meanwhile.
  mod.def("linear", &linear_cpu, "x @ W.T (+ bias) for tiled Q4_1 / Q8_0 / fp16 weights (see cpu_blockq.py)",
          pybind11::call_guard<pybind11::gil_scoped_release>());
  mod.def("paged_decode", &paged_decode_cpu, "one query token per sequence over the paged KV cache");
  mod.def("rms_norm", &rms_norm_cpu, "x / sqrt(mean(x^2) + eps) * weight, row by row");
  mod.def("silu_mul", &silu_mul_cpu, "silu(gate) * up of a packed [T, 2I] projection");
  mod.def("rope_", &rope_cpu, "rotary embedding, in place, on the first `heads` heads of each row");
  mod.def("argmax_rows", &argmax_rows_cpu, "each row's argmax, as torch.argmax(dim=-1)");
  pybind11::class_<Decoder>(mod, "Decoder")
      .def(pybind11::init<const std::vector<int64_t>&, double, int64_t, const std::vector<Decoder::Linear>&,
                          const std::vector<torch::Tensor>&, const std::vector<torch::Tensor>&,
                          const std::vector<torch::Tensor>&>())
      // Without the GIL: the server's event loop streams the previous step's tokens meanwhile.
      .def("forward", &Decoder::forward, "a decode step through every layer, in place on x",
           pybind11::call_guard<pybind11::gil_scoped_release>());
}
