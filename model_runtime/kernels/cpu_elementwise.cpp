// The small per-layer operations of a Llama block on the CPU (fp32, AVX2), each one pass over its
// rows: at decode sizes torch spends longer dispatching them (RMSNorm alone is six ops) than
// computing them.

#include <immintrin.h>
#include <torch/extension.h>

#include <cmath>

#include "cpu_simd.h"

using atenea::exp256;
using atenea::hsum;

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
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = xp + r * h;
    float* out = yp + r * h;
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= h; i += 8) {
      const __m256 v = _mm256_loadu_ps(in + i);
      acc = _mm256_fmadd_ps(v, v, acc);
    }
    float squares = hsum(acc);
    for (; i < h; ++i) squares += in[i] * in[i];
    const float inv = 1.0f / std::sqrt(squares / static_cast<float>(h) + static_cast<float>(eps));
    const __m256 scale = _mm256_set1_ps(inv);
    for (i = 0; i + 8 <= h; i += 8)
      _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(in + i), scale), _mm256_loadu_ps(wp + i)));
    for (; i < h; ++i) out[i] = in[i] * inv * wp[i];
  }
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
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 sign = _mm256_set1_ps(-0.0f);
#pragma omp parallel for if (rows >= PARALLEL_ROWS)
  for (int64_t r = 0; r < rows; ++r) {
    const float* gate = gp + r * 2 * half;
    const float* up = gate + half;
    float* out = yp + r * half;
    int64_t i = 0;
    for (; i + 8 <= half; i += 8) {
      const __m256 g = _mm256_loadu_ps(gate + i);
      const __m256 sig = _mm256_div_ps(one, _mm256_add_ps(one, exp256(_mm256_xor_ps(g, sign))));
      _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(g, sig), _mm256_loadu_ps(up + i)));
    }
    for (; i < half; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
  }
  return y;
}

// Rotary embedding (rotate-half layout), in place, on the first `heads` heads of each row of a
// packed [T, (H + 2 KVH) * D] Q/K/V projection: the queries and keys; cos and sin are [T, D].
void rope_cpu(torch::Tensor& qkv, const torch::Tensor& cos, const torch::Tensor& sin, int64_t heads) {
  TORCH_CHECK(qkv.dim() == 2 && qkv.is_contiguous() && qkv.scalar_type() == torch::kFloat32, "qkv [T, N] fp32");
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && cos.scalar_type() == torch::kFloat32 &&
                  sin.scalar_type() == torch::kFloat32 && cos.numel() == sin.numel() && cos.numel() % qkv.size(0) == 0,
              "cos and sin [T, D] fp32");
  const int64_t rows = qkv.size(0), dim = cos.numel() / rows, half = dim / 2;
  TORCH_CHECK(dim % 2 == 0 && heads * dim <= qkv.size(1), "head shapes");
  float* xp = qkv.data_ptr<float>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  const int64_t stride = qkv.size(1);
#pragma omp parallel for if (rows >= PARALLEL_ROWS)
  for (int64_t r = 0; r < rows; ++r) {
    const float* c = cp + r * dim;
    const float* s = sp + r * dim;
    for (int64_t h = 0; h < heads; ++h) {
      float* x = xp + r * stride + h * dim;
      int64_t i = 0;
      for (; i + 8 <= half; i += 8) {
        const __m256 x1 = _mm256_loadu_ps(x + i), x2 = _mm256_loadu_ps(x + half + i);
        _mm256_storeu_ps(x + i, _mm256_fmsub_ps(x1, _mm256_loadu_ps(c + i), _mm256_mul_ps(x2, _mm256_loadu_ps(s + i))));
        _mm256_storeu_ps(x + half + i,
                         _mm256_fmadd_ps(x2, _mm256_loadu_ps(c + half + i), _mm256_mul_ps(x1, _mm256_loadu_ps(s + half + i))));
      }
      for (; i < half; ++i) {
        const float x1 = x[i], x2 = x[half + i];
        x[i] = x1 * c[i] - x2 * s[i];
        x[half + i] = x2 * c[half + i] + x1 * s[half + i];
      }
    }
  }
}
