// Decode attention on the CPU straight from the paged KV cache (AVX2, fp32 arithmetic over an fp32
// or fp16 cache): one query token per sequence reads its keys and values through its block table,
// so nothing is gathered or padded, and each sequence is one unit of work for the threads.

#include "cpu_attention.h"

#include <immintrin.h>
#include <omp.h>
#include <torch/extension.h>

#include "cpu_simd.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

namespace atenea {
namespace {

using Shapes = AttentionShapes;

// 8 cache values as fp32, from an fp32 or an fp16 (IEEE half, as bits) cache.
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline float load1(const float* p) { return *p; }
inline float load1(const uint16_t* p) { return _cvtsh_ss(*p); }

// Offsets (in floats) of positions 0..len-1 of a sequence's cache rows, from its block table.
void row_offsets(const int32_t* table, int64_t len, const Shapes& s, std::vector<int64_t>& offsets) {
  offsets.resize(static_cast<size_t>(len));
  const int64_t row = s.kv_heads * s.dim;
  for (int64_t pos = 0; pos < len; pos += s.block_size) {
    const int64_t base = static_cast<int64_t>(table[pos / s.block_size]) * s.block_size;
    for (int64_t j = 0; j < s.block_size && pos + j < len; ++j) offsets[pos + j] = (base + j) * row;
  }
}

// The dot products of query `qg` with the keys of 8 positions (row offsets `r`, each already
// pointing at this KV head): eight independent FMA chains over the head's dimensions, then one
// transposing reduction that leaves the 8 sums in one vector, instead of a horizontal sum each.
template <typename T>
inline __m256 dot8(const float* qg, const T* keys, const int64_t* r, int64_t vec_dim) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  for (int64_t i = 0; i < vec_dim; i += 8) {
    const __m256 qv = _mm256_loadu_ps(qg + i);
    a0 = _mm256_fmadd_ps(qv, load8(keys + r[0] + i), a0);
    a1 = _mm256_fmadd_ps(qv, load8(keys + r[1] + i), a1);
    a2 = _mm256_fmadd_ps(qv, load8(keys + r[2] + i), a2);
    a3 = _mm256_fmadd_ps(qv, load8(keys + r[3] + i), a3);
    a4 = _mm256_fmadd_ps(qv, load8(keys + r[4] + i), a4);
    a5 = _mm256_fmadd_ps(qv, load8(keys + r[5] + i), a5);
    a6 = _mm256_fmadd_ps(qv, load8(keys + r[6] + i), a6);
    a7 = _mm256_fmadd_ps(qv, load8(keys + r[7] + i), a7);
  }
  // hadd pairs up neighbours within each 128-bit lane: after two rounds lane 0 of u0 holds the
  // low-half sums of positions 0-3 and lane 1 their high-half sums; u1 the same for 4-7.
  const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// o[0 .. 8 * NV) = sum over positions p of weights[p] * values row p: one FMA chain per output
// vector (NV of them in flight), each value row read once per head.
template <int NV, typename T>
void weigh(const float* weights, const T* values, const int64_t* rows, int64_t len, float* o) {
  __m256 acc[NV];
#pragma GCC unroll 8
  for (int j = 0; j < NV; ++j) acc[j] = _mm256_setzero_ps();
  for (int64_t p = 0; p < len; ++p) {
    const __m256 w = _mm256_broadcast_ss(weights + p);
    const T* v = values + rows[p];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) acc[j] = _mm256_fmadd_ps(w, load8(v + 8 * j), acc[j]);
  }
#pragma GCC unroll 8
  for (int j = 0; j < NV; ++j) _mm256_storeu_ps(o + 8 * j, acc[j]);
}

template <typename T>
void weigh_vectors(int64_t count, const float* weights, const T* values, const int64_t* rows, int64_t len,
                   float* o) {
  switch (count) {
    case 1: weigh<1, T>(weights, values, rows, len, o); break;
    case 2: weigh<2, T>(weights, values, rows, len, o); break;
    case 3: weigh<3, T>(weights, values, rows, len, o); break;
    case 4: weigh<4, T>(weights, values, rows, len, o); break;
    case 5: weigh<5, T>(weights, values, rows, len, o); break;
    case 6: weigh<6, T>(weights, values, rows, len, o); break;
    case 7: weigh<7, T>(weights, values, rows, len, o); break;
    default: weigh<8, T>(weights, values, rows, len, o); break;
  }
}

// Query heads g0..g0+group of one sequence against KV head `kvh`: scores, softmax, weighted values.
template <typename T>
void attend(const float* q, const T* keys, const T* values, const int64_t* rows, int64_t len,
            int64_t kvh, int64_t g0, int64_t group, const Shapes& s, float scale, float* out,
            std::vector<float>& scores) {
  scores.resize(static_cast<size_t>(group * len + 8));
  const int64_t vec_dim = s.dim / 8 * 8;
  const T* k_head = keys + kvh * s.dim;
  const T* v_head = values + kvh * s.dim;
  const __m256 scale8 = _mm256_set1_ps(scale);
  for (int64_t l = 0; l < len; l += 8) {
    // A last block of fewer than 8 positions repeats its last row; those sums are not kept.
    int64_t r[8];
    for (int j = 0; j < 8; ++j) r[j] = rows[std::min(l + j, len - 1)];
    if (l + 8 < len) {  // cache rows are scattered blocks: ask for the next ones early
      const char* next = reinterpret_cast<const char*>(k_head + rows[l + 8]);
      for (int64_t b = 0; b < s.dim * 4; b += 64) _mm_prefetch(next + b, _MM_HINT_T0);
    }
    const int64_t count = std::min<int64_t>(8, len - l);
    for (int64_t g = 0; g < group; ++g) {
      const float* qg = q + (g0 + g) * s.dim;
      alignas(32) float dots[8];
      _mm256_store_ps(dots, _mm256_mul_ps(dot8(qg, k_head, r, vec_dim), scale8));
      for (int64_t j = 0; j < count; ++j) {
        float tail = 0.0f;  // dimensions past the last multiple of 8
        for (int64_t i = vec_dim; i < s.dim; ++i) tail += qg[i] * load1(k_head + r[j] + i);
        scores[g * len + l + j] = vec_dim == s.dim ? dots[j] : dots[j] + tail * scale;
      }
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
    for (int64_t i = 0; i < vec_dim; i += 64) weigh_vectors(std::min<int64_t>(8, (vec_dim - i) / 8), sc, v_head + i, rows, len, o + i);
    for (int64_t i = vec_dim; i < s.dim; ++i) {
      float acc = 0.0f;
      for (int64_t p = 0; p < len; ++p) acc += sc[p] * load1(v_head + rows[p] + i);
      o[i] = acc;
    }
  }
}

template <typename T>
void attend_all(const float* q, const T* keys, const T* values, const int32_t* table, int64_t len,
                const AttentionShapes& s, float scale, float* out, AttentionScratch& scratch) {
  row_offsets(table, len, s, scratch.rows);
  const int64_t group = s.heads / s.kv_heads;
  for (int64_t kvh = 0; kvh < s.kv_heads; ++kvh)
    attend(q, keys, values, scratch.rows.data(), len, kvh, kvh * group, group, s, scale, out, scratch.scores);
}

}  // namespace

void attend_sequence(const float* q, const float* keys, const float* values, const int32_t* table, int64_t len,
                     const AttentionShapes& s, float scale, float* out, AttentionScratch& scratch) {
  attend_all(q, keys, values, table, len, s, scale, out, scratch);
}

void attend_sequence(const float* q, const uint16_t* keys, const uint16_t* values, const int32_t* table,
                     int64_t len, const AttentionShapes& s, float scale, float* out, AttentionScratch& scratch) {
  attend_all(q, keys, values, table, len, s, scale, out, scratch);
}

torch::Tensor paged_decode_cpu(const torch::Tensor& q, const torch::Tensor& keys, const torch::Tensor& values,
                               const torch::Tensor& block_tables, const torch::Tensor& context_lens,
                               int64_t block_size, double scale) {
  TORCH_CHECK(q.dim() == 3 && keys.dim() == 3 && values.sizes() == keys.sizes(), "q [B,H,D], cache [S,KVH,D]");
  TORCH_CHECK(q.scalar_type() == torch::kFloat32, "the CPU decode kernel computes in fp32");
  TORCH_CHECK((keys.scalar_type() == torch::kFloat32 || keys.scalar_type() == torch::kHalf) &&
                  values.scalar_type() == keys.scalar_type(),
              "the cache is fp32 or fp16");
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
  const bool half = keys.scalar_type() == torch::kHalf;
  const void* kp = keys.data_ptr();
  const void* vp = values.data_ptr();
  const int32_t* tp = tables.data_ptr<int32_t>();
  const int32_t* lp = lens.data_ptr<int32_t>();
  float* op = out.data_ptr<float>();
  std::atomic<int64_t> next{0};
  auto work = [&] {
    AttentionScratch scratch;
    for (int64_t b = next++; b < batch; b = next++) {
      const float* qb = qp + b * s.heads * s.dim;
      float* ob = op + b * s.heads * s.dim;
      if (half)
        attend_sequence(qb, static_cast<const uint16_t*>(kp), static_cast<const uint16_t*>(vp), tp + b * s.width,
                        lp[b], s, static_cast<float>(scale), ob, scratch);
      else
        attend_sequence(qb, static_cast<const float*>(kp), static_cast<const float*>(vp), tp + b * s.width, lp[b], s,
                        static_cast<float>(scale), ob, scratch);
    }
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
