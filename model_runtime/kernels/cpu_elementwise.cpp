// The small per-layer operations of a Llama block on the CPU (fp32, AVX2), each one pass over its
// rows: at decode sizes torch spends longer dispatching them (RMSNorm alone is six ops) than
// computing them.

#include <torch/extension.h>

#include "cpu_rows.h"

namespace atenea {

// Enough rows to be worth waking the second thread for.
constexpr int64_t PARALLEL_ROWS = 64;

// y = x / sqrt(mean(x^2) + eps) * weight, row by row.
torch::Tensor rms_norm_cpu(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && weight.scalar_type() == torch::kFloat32,
              "rms_norm takes float32 [T, H]");
  TORCH_CHECK(weight.is_contiguous() && weight.numel() == x.size(1), "weight size");
  const auto xc = x.contiguous();
  auto y = torch::empty_like(xc);
  const int64_t rows = xc.size(0), h = xc.size(1);
  const float* xp = xc.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* yp = y.data_ptr<float>();
#pragma omp parallel for if (rows >= PARALLEL_ROWS)
  for (int64_t r = 0; r < rows; ++r) rms_norm_row(xp + r * h, wp, h, static_cast<float>(eps), yp + r * h);
  return y;
}

// SwiGLU on a packed [T, 2I] gate/up projection: silu(gate) * up, [T, I].
torch::Tensor silu_mul_cpu(const torch::Tensor& gate_up) {
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.scalar_type() == torch::kFloat32 && gate_up.size(1) % 2 == 0,
              "silu_mul takes float32 [T, 2I]");
  const auto gu = gate_up.contiguous();
  const int64_t rows = gu.size(0), half = gu.size(1) / 2;
  auto y = torch::empty({rows, half}, gu.options());
  const float* gp = gu.data_ptr<float>();
  float* yp = y.data_ptr<float>();
#pragma omp parallel for if (rows >= PARALLEL_ROWS)
  for (int64_t r = 0; r < rows; ++r) silu_mul_row(gp + r * 2 * half, gp + r * 2 * half + half, half, yp + r * half);
  return y;
}

// Rotary embedding (rotate-half layout), in place, on the first `heads` heads of each row of a
// packed [T, (H + 2 KVH) * D] Q/K/V projection: the queries and keys; cos and sin are [T, D].
void rope_cpu(torch::Tensor& qkv, const torch::Tensor& cos, const torch::Tensor& sin, int64_t heads) {
  TORCH_CHECK(qkv.dim() == 2 && qkv.is_contiguous() && qkv.scalar_type() == torch::kFloat32, "qkv [T, N] fp32");
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && cos.scalar_type() == torch::kFloat32 &&
                  sin.scalar_type() == torch::kFloat32 && cos.numel() == sin.numel() && cos.numel() % qkv.size(0) == 0,
              "cos and sin [T, D] fp32");
  const int64_t rows = qkv.size(0), dim = cos.numel() / rows;
  TORCH_CHECK(dim % 2 == 0 && heads * dim <= qkv.size(1), "head shapes");
  float* xp = qkv.data_ptr<float>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  const int64_t stride = qkv.size(1);
#pragma omp parallel for if (rows >= PARALLEL_ROWS)
  for (int64_t r = 0; r < rows; ++r) rope_row(xp + r * stride, cp + r * dim, sp + r * dim, heads, dim);
}

}  // namespace atenea
