// Decode attention on the CPU straight from the paged KV cache (fp32, AVX2): one query token per
// sequence reads its keys and values through its block table, so nothing is gathered or padded,
// and each sequence is one unit of work for the threads.

#include "cpu_attention.h"

#include <immintrin.h>
#include <omp.h>
#include <torch/extension.h>

#include "cpu_simd.h"

#include <atomic>
#include <cmath>
#include <vector>

namespace atenea {
namespace {

using Shapes = AttentionShapes;

// Offsets (in floats) of positions 0..len-1 of a sequence's cache rows, from its block table.
void row_offsets(const int32_t* table, int64_t len, const Shapes& s, std::vector<int64_t>& offsets) {
  offsets.resize(static_cast<size_t>(len));
  const int64_t row = s.kv_heads * s.dim;
  for (int64_t pos = 0; pos < len; pos += s.block_size) {
    const int64_t base = static_cast<int64_t>(table[pos / s.block_size]) * s.block_size;
    for (int64_t j = 0; j < s.block_size && pos + j < len; ++j) offsets[pos + j] = (base + j) * row;
  }
}

// Query heads g0..g0+group of sequence b against KV head `kvh`: scores, softmax, weighted values.
// Loops keep several independent FMA chains in flight: one per query head for the scores (they
// share each key row), four over positions for the weighted sum.
void attend(const float* q, const float* keys, const float* values, const int64_t* rows, int64_t len,
            int64_t kvh, int64_t g0, int64_t group, const Shapes& s, float scale, float* out,
            std::vector<float>& scores) {
  scores.resize(static_cast<size_t>(group * len));
  const int64_t vec_dim = s.dim / 8 * 8;
  constexpr int64_t AHEAD = 4;  // cache rows are scattered blocks: ask for the next ones early
  for (int64_t l = 0; l < len; ++l) {
    if (l + AHEAD < len) {
      const char* next = reinterpret_cast<const char*>(keys + rows[l + AHEAD] + kvh * s.dim);
      for (int64_t b = 0; b < s.dim * 4; b += 64) _mm_prefetch(next + b, _MM_HINT_T0);
    }
    const float* k = keys + rows[l] + kvh * s.dim;
    for (int64_t g = 0; g < group; ++g) {
      const float* qg = q + (g0 + g) * s.dim;
      __m256 acc = _mm256_setzero_ps();
      for (int64_t i = 0; i < vec_dim; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(qg + i), _mm256_loadu_ps(k + i), acc);
      float dot = hsum(acc);
      for (int64_t i = vec_dim; i < s.dim; ++i) dot += qg[i] * k[i];
      scores[g * len + l] = dot * scale;
    }
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
    for (l = 0; l < len; ++l) sc[l] *= inv;
    float* o = out + (g0 + g) * s.dim;
    const float* v0 = values + kvh * s.dim;
    for (int64_t i = 0; i < vec_dim; i += 8) {
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      int64_t p = 0;
      for (; p + 4 <= len; p += 4) {
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(sc[p]), _mm256_loadu_ps(v0 + rows[p] + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_set1_ps(sc[p + 1]), _mm256_loadu_ps(v0 + rows[p + 1] + i), a1);
        a2 = _mm256_fmadd_ps(_mm256_set1_ps(sc[p + 2]), _mm256_loadu_ps(v0 + rows[p + 2] + i), a2);
        a3 = _mm256_fmadd_ps(_mm256_set1_ps(sc[p + 3]), _mm256_loadu_ps(v0 + rows[p + 3] + i), a3);
      }
      for (; p < len; ++p)
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(sc[p]), _mm256_loadu_ps(v0 + rows[p] + i), a0);
      _mm256_storeu_ps(o + i, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    }
    for (int64_t i = vec_dim; i < s.dim; ++i) {
      float acc = 0.0f;
      for (int64_t p = 0; p < len; ++p) acc += sc[p] * v0[rows[p] + i];
      o[i] = acc;
    }
  }
}

}  // namespace

void attend_sequence(const float* q, const float* keys, const float* values, const int32_t* table, int64_t len,
                     const AttentionShapes& s, float scale, float* out, AttentionScratch& scratch) {
  row_offsets(table, len, s, scratch.rows);
  const int64_t group = s.heads / s.kv_heads;
  for (int64_t kvh = 0; kvh < s.kv_heads; ++kvh)
    attend(q, keys, values, scratch.rows.data(), len, kvh, kvh * group, group, s, scale, out, scratch.scores);
}

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
  const float* qp = qc.data_ptr<float>();
  const float* kp = keys.data_ptr<float>();
  const float* vp = values.data_ptr<float>();
  const int32_t* tp = tables.data_ptr<int32_t>();
  const int32_t* lp = lens.data_ptr<int32_t>();
  float* op = out.data_ptr<float>();
  std::atomic<int64_t> next{0};
  auto work = [&] {
    AttentionScratch scratch;
    for (int64_t b = next++; b < batch; b = next++)
      attend_sequence(qp + b * s.heads * s.dim, kp, vp, tp + b * s.width, lp[b], s, static_cast<float>(scale),
                      op + b * s.heads * s.dim, scratch);
  };
  // Plain OpenMP and a shared counter, as in cpu_blockq.cpp.
  if (batch == 1 || omp_in_parallel() || omp_get_max_threads() == 1) {
    work();
  } else {
#pragma omp parallel
    work();
  }
  return out;
}

}  // namespace atenea
