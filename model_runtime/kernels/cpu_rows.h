// One row of each small per-layer operation of a Llama block (fp32, AVX2), shared by the
// standalone kernels (cpu_elementwise.cpp) and the fused decode step (cpu_decoder.cpp).
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "cpu_simd.h"

namespace atenea {

// out = in / sqrt(mean(in^2) + eps) * weight over h values.
inline void rms_norm_row(const float* in, const float* weight, int64_t h, float eps, float* out) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= h; i += 8) {
    const __m256 v = _mm256_loadu_ps(in + i);
    acc = _mm256_fmadd_ps(v, v, acc);
  }
  float squares = hsum(acc);
  for (; i < h; ++i) squares += in[i] * in[i];
  const float inv = 1.0f / std::sqrt(squares / static_cast<float>(h) + eps);
  const __m256 scale = _mm256_set1_ps(inv);
  for (i = 0; i + 8 <= h; i += 8)
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(in + i), scale), _mm256_loadu_ps(weight + i)));
  for (; i < h; ++i) out[i] = in[i] * inv * weight[i];
}

// out = silu(gate) * up over n values.
inline void silu_mul_row(const float* gate, const float* up, int64_t n, float* out) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 sig = _mm256_div_ps(one, _mm256_add_ps(one, exp256(_mm256_xor_ps(g, sign))));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(g, sig), _mm256_loadu_ps(up + i)));
  }
  for (; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

// Rotary embedding (rotate-half layout), in place, on `heads` consecutive heads of `dim` values at
// x; c and s are this row's cos and sin, `dim` each.
inline void rope_row(float* x, const float* c, const float* s, int64_t heads, int64_t dim) {
  const int64_t half = dim / 2;
  for (int64_t h = 0; h < heads; ++h, x += dim) {
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

}  // namespace atenea
