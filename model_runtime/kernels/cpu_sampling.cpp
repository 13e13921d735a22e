// The greedy pick on the CPU (AVX2): torch's argmax takes 0.8 ms a step for 16 rows of a 49k
// vocabulary on 2 cores; two vector passes over each row (in cache after the first) take 0.2.

#include <immintrin.h>
#include <torch/extension.h>

#include <cmath>
#include <limits>

namespace atenea {

namespace {

// Index of the first maximum of p[0, n), NaN counting as the largest value, as torch.argmax does.
int64_t argmax_row(const float* p, int64_t n) {
  __m256 best = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 unordered = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(p + i);
    best = _mm256_max_ps(best, v);
    unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, best);
  float top = lanes[0];
  for (int j = 1; j < 8; ++j) top = std::max(top, lanes[j]);
  bool nan = _mm256_movemask_ps(unordered) != 0;
  for (int64_t j = i; j < n; ++j) {
    nan = nan || std::isnan(p[j]);
    top = std::max(top, p[j]);
  }
  for (int64_t j = 0; j < n; ++j)
    if (nan ? std::isnan(p[j]) : p[j] == top) return j;
  return 0;  // every value is -inf
}

}  // namespace

// [S, V] float32 -> [S] int64: each row's argmax.
torch::Tensor argmax_rows_cpu(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.size(1) > 0,
              "argmax_rows takes float32 [S, V]");
  const auto xc = x.contiguous();
  const int64_t rows = xc.size(0), n = xc.size(1);
  auto out = torch::empty({rows}, xc.options().dtype(torch::kInt64));
  const float* xp = xc.data_ptr<float>();
  int64_t* op = out.data_ptr<int64_t>();
#pragma omp parallel for if (rows > 1 && rows * n >= (1 << 18))
  for (int64_t r = 0; r < rows; ++r) op[r] = argmax_row(xp + r * n, n);
  return out;
}

}  // namespace atenea
