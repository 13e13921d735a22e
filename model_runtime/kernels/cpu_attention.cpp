// Decode attention on the CPU straight from the paged KV cache (fp32, AVX2): one query token per
// sequence reads its keys and values through its block table, so nothing is gathered or padded,
// and each (sequence, KV head) pair is one unit of work for the threads.

#include <immintrin.h>
#include <omp.h>
#include <torch/extension.h>

#include "cpu_simd.h"

#include <atomic>
#include <cmath>
#include <vector>

namespace {

using atenea::exp256;
using atenea::hsum;

inline float dot(const float* a, const float* b, int64_t d) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= d; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  float s = hsum(acc);
  for (; i < d; ++i) s += a[i] * b[i];
  return s;
}

struct Shapes {
  int64_t heads, kv_heads, dim, width, block_size;
};

// Query heads g0..g0+group of sequence b against KV head `kvh`: scores, softmax, weighted values.
void attend(const float* q, const float* keys, const float* values, const int32_t* table, int64_t len,
            int64_t kvh, int64_t g0, int64_t group, const Shapes& s, float scale, float* out,
            std::vector<float>& scores) {
  scores.resize(static_cast<size_t>(group * len));
  const int64_t row = s.kv_heads * s.dim;  // floats per cache slot
  for (int64_t l = 0; l < len; ++l) {
    const int64_t slot = static_cast<int64_t>(table[l / s.block_size]) * s.block_size + l % s.block_size;
    const float* k = keys + slot * row + kvh * s.dim;
    for (int64_t g = 0; g < group; ++g) scores[g * len + l] = dot(q + (g0 + g) * s.dim, k, s.dim) * scale;
  }
  for (int64_t g = 0; g < group; ++g) {
    float* sc = scores.data() + g * len;
    float peak = -INFINITY;
    for (int64_t l = 0; l < len; ++l) peak = std::max(peak, sc[l]);
    const __m256 top = _mm256_set1_ps(peak);
    __m256 total = _mm256_setzero_ps();
    int64_t l = 0;
    for (; l + 8 <= len; l += 8) {
      const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(sc + l), top));
      _mm256_storeu_ps(sc + l, e);
      total = _mm256_add_ps(total, e);
    }
    float sum = hsum(total);
    for (; l < len; ++l) {
      sc[l] = std::exp(sc[l] - peak);
      sum += sc[l];
    }
    const float inv = 1.0f / sum;
    float* o = out + (g0 + g) * s.dim;
    for (int64_t i = 0; i < s.dim; ++i) o[i] = 0.0f;
    for (int64_t p = 0; p < len; ++p) {
      const int64_t slot = static_cast<int64_t>(table[p / s.block_size]) * s.block_size + p % s.block_size;
      const float* v = values + slot * row + kvh * s.dim;
      const __m256 w = _mm256_set1_ps(sc[p] * inv);
      int64_t i = 0;
      for (; i + 8 <= s.dim; i += 8)
        _mm256_storeu_ps(o + i, _mm256_fmadd_ps(w, _mm256_loadu_ps(v + i), _mm256_loadu_ps(o + i)));
      for (; i < s.dim; ++i) o[i] += sc[p] * inv * v[i];
    }
  }
}

}  // namespace

torch::Tensor paged_decode_cpu(const torch::Tensor& q, const torch::Tensor& keys, const torch::Tensor& values,
                               const torch::Tensor& block_tables, const torch::Tensor& context_lens,
                               int64_t block_size, double scale) {
  TORCH_CHECK(q.dim() == 3 && keys.dim() == 3 && values.sizes() == keys.sizes(), "q [B,H,D], cache [S,KVH,D]");
  TORCH_CHECK(q.scalar_type() == torch::kFloat32 && keys.scalar_type() == torch::kFloat32 &&
                  values.scalar_type() == torch::kFloat32,
              "the CPU decode kernel is fp32");
  TORCH_CHECK(keys.is_contiguous() && values.is_contiguous(), "the cache must be contiguous");
  TORCH_CHECK(block_tables.scalar_type() == torch::kInt32 && context_lens.scalar_type() == torch::kInt32,
              "block tables and lengths are int32");
  const auto qc = q.contiguous();
  const auto tables = block_tables.contiguous();
  const auto lens = context_lens.contiguous();
  const int64_t batch = q.size(0);
  const Shapes s{q.size(1), keys.size(1), q.size(2), tables.size(1), block_size};
  TORCH_CHECK(s.heads % s.kv_heads == 0 && keys.size(2) == s.dim, "head shapes");
  auto out = torch::empty_like(qc);
  const int64_t group = s.heads / s.kv_heads, units = batch * s.kv_heads;
  const float* qp = qc.data_ptr<float>();
  const float* kp = keys.data_ptr<float>();
  const float* vp = values.data_ptr<float>();
  const int32_t* tp = tables.data_ptr<int32_t>();
  const int32_t* lp = lens.data_ptr<int32_t>();
  float* op = out.data_ptr<float>();
  std::atomic<int64_t> next{0};
  auto work = [&] {
    std::vector<float> scores;
    for (int64_t u = next++; u < units; u = next++) {
      const int64_t b = u / s.kv_heads, kvh = u % s.kv_heads;
      attend(qp + b * s.heads * s.dim, kp, vp, tp + b * s.width, lp[b], kvh, kvh * group, group, s,
             static_cast<float>(scale), op + b * s.heads * s.dim, scores);
    }
  };
  // Plain OpenMP and a shared counter, as in cpu_blockq.cpp.
  if (units == 1 || omp_in_parallel() || omp_get_max_threads() == 1) {
    work();
  } else {
#pragma omp parallel
    work();
  }
  return out;
}
