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

// Positions ahead whose cache rows are asked for while the current ones are computed: the rows of
// a sequence are scattered blocks, which the hardware prefetchers do not follow.
constexpr int64_t PREFETCH_AHEAD = 8;

// Asks for the cache lines of one KV head's row at p (`dim` values).
template <typename T>
inline void prefetch_row(const T* p, int64_t dim) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t b = 0; b < dim * static_cast<int64_t>(sizeof(T)); b += 64) _mm_prefetch(c + b, _MM_HINT_T0);
}

// Scores of G query heads (q, q + dim, ...) against P positions (row offsets r, each pointing at
// this KV head), written `ld` apart per head: each key vector is loaded and converted once for all
// G heads, which share it (grouped-query attention).
template <int G, int P, typename T>
inline void dots(const float* q, int64_t dim, const T* keys, const int64_t* r, int64_t vec_dim, float* out,
                 int64_t ld) {
  static_assert(P == 1 || P == 2 || P == 4, "reductions of 1, 2 or 4 positions");
  __m256 a[G][P];
#pragma GCC unroll 4
  for (int g = 0; g < G; ++g)
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) a[g][p] = _mm256_setzero_ps();
  for (int64_t i = 0; i < vec_dim; i += 8) {
    __m256 k[P];
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) k[p] = load8(keys + r[p] + i);
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) {
      const __m256 qv = _mm256_loadu_ps(q + g * dim + i);
#pragma GCC unroll 4
      for (int p = 0; p < P; ++p) a[g][p] = _mm256_fmadd_ps(qv, k[p], a[g][p]);
    }
  }
#pragma GCC unroll 4
  for (int g = 0; g < G; ++g) {
    alignas(16) float sums[4];
    if constexpr (P == 4) {  // dot8's reduction, for 4 positions
      const __m256 u = _mm256_hadd_ps(_mm256_hadd_ps(a[g][0], a[g][1]), _mm256_hadd_ps(a[g][2], a[g][3]));
      _mm_store_ps(sums, _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1)));
    } else {
#pragma GCC unroll 4
      for (int p = 0; p < P; ++p) sums[p] = hsum(a[g][p]);
    }
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) out[g * ld + p] = sums[p];
  }
}

// o_g[0 .. 8 * NV) = sum over positions p of weights_g[p] * values row p, for G heads whose weights
// are `ld` apart and outputs `dim` apart: each value vector is loaded once for all G heads, and
// each output vector is one FMA chain (G * NV of them in flight). With `fetch`, asks for the rows
// PREFETCH_AHEAD positions on (given from their start: the first pass over a head's dimensions).
template <int G, int NV, typename T>
void weigh(const float* weights, int64_t ld, const T* values, const int64_t* rows, int64_t len, float* o, int64_t dim,
           const T* fetch) {
  __m256 acc[G][NV];
#pragma GCC unroll 4
  for (int g = 0; g < G; ++g)
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) acc[g][j] = _mm256_setzero_ps();
  for (int64_t p = 0; p < len; ++p) {
    if (fetch && p + PREFETCH_AHEAD < len) prefetch_row(fetch + rows[p + PREFETCH_AHEAD], dim);
    const T* v = values + rows[p];
    __m256 vv[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) vv[j] = load8(v + 8 * j);
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) {
      const __m256 w = _mm256_broadcast_ss(weights + g * ld + p);
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[g][j] = _mm256_fmadd_ps(w, vv[j], acc[g][j]);
    }
  }
#pragma GCC unroll 4
  for (int g = 0; g < G; ++g)
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) _mm256_storeu_ps(o + g * dim + 8 * j, acc[g][j]);
}

// In place: scores -> softmax(scores * scale).
inline void softmax(float* sc, int64_t len, float scale) {
  for (int64_t p = 0; p < len; ++p) sc[p] *= scale;
  float peak = -INFINITY;
  for (int64_t p = 0; p < len; ++p) peak = std::max(peak, sc[p]);
  const __m256 top = _mm256_set1_ps(peak);
  __m256 total = _mm256_setzero_ps();
  int64_t p = 0;
  for (; p + 8 <= len; p += 8) {
    const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(sc + p), top));
    _mm256_storeu_ps(sc + p, e);
    total = _mm256_add_ps(total, e);
  }
  float sum = hsum(total);
  for (; p < len; ++p) {
    sc[p] = std::exp(sc[p] - peak);
    sum += sc[p];
  }
  const float inv = 1.0f / sum;
  for (p = 0; p < len; ++p) sc[p] *= inv;
}

// G query heads from h0, all reading KV head `kvh`: scores, softmax, weighted values. `scores`
// holds G * len floats.
template <int G, typename T>
void attend_heads(const float* q, const T* keys, const T* values, const int64_t* rows, int64_t len, int64_t kvh,
                  int64_t h0, const Shapes& s, float scale, float* out, float* scores) {
  constexpr int P = G == 1 ? 8 : G <= 3 ? 4 : 2;                // positions per pass: G * P accumulators
  constexpr int NV = G == 1 ? 8 : G == 2 ? 6 : G == 3 ? 4 : 3;  // value vectors per pass: G * NV
  const int64_t vec_dim = s.dim / 8 * 8;
  const T* k_head = keys + kvh * s.dim;
  const T* v_head = values + kvh * s.dim;
  const float* qh = q + h0 * s.dim;
  int64_t l = 0;
  for (; l + P <= len; l += P) {
    for (int64_t j = l + PREFETCH_AHEAD; j < std::min(l + PREFETCH_AHEAD + P, len); ++j)
      prefetch_row(k_head + rows[j], s.dim);
    if constexpr (G == 1) {
      _mm256_storeu_ps(scores + l, dot8(qh, k_head, rows + l, vec_dim));
    } else {
      dots<G, P>(qh, s.dim, k_head, rows + l, vec_dim, scores + l, len);
    }
  }
  for (; l < len; ++l) dots<G, 1>(qh, s.dim, k_head, rows + l, vec_dim, scores + l, len);
  for (int64_t g = 0; g < G; ++g) {
    float* sc = scores + g * len;
    const float* qg = qh + g * s.dim;
    if (vec_dim != s.dim)  // dimensions past the last multiple of 8
      for (int64_t p = 0; p < len; ++p)
        for (int64_t i = vec_dim; i < s.dim; ++i) sc[p] += qg[i] * load1(k_head + rows[p] + i);
    softmax(sc, len, scale);
  }
  float* o = out + h0 * s.dim;
  int64_t i = 0;
  for (; i + 8 * NV <= vec_dim; i += 8 * NV)
    weigh<G, NV>(scores, len, v_head + i, rows, len, o + i, s.dim, i == 0 ? v_head : nullptr);
  for (; i < vec_dim; i += 8) weigh<G, 1>(scores, len, v_head + i, rows, len, o + i, s.dim, i == 0 ? v_head : nullptr);
  for (int64_t g = 0; g < G; ++g)
    for (i = vec_dim; i < s.dim; ++i) {
      float acc = 0.0f;
      for (int64_t p = 0; p < len; ++p) acc += scores[g * len + p] * load1(v_head + rows[p] + i);
      o[g * s.dim + i] = acc;
    }
}

template <typename T>
void attend_all(const float* q, const T* keys, const T* values, const int32_t* table, int64_t len,
                const AttentionShapes& s, float scale, float* out, AttentionScratch& scratch) {
  row_offsets(table, len, s, scratch.rows);
  const int64_t* rows = scratch.rows.data();
  const int64_t group = s.heads / s.kv_heads;
  scratch.scores.resize(static_cast<size_t>(4 * len));
  float* sc = scratch.scores.data();
  for (int64_t kvh = 0; kvh < s.kv_heads; ++kvh) {
    // The KV head's query heads in passes of up to 4 at once; 3 at a time where 3 divides them.
    for (int64_t h = kvh * group, end = h + group; h < end;) {
      const int64_t left = end - h;
      const int64_t take = left % 3 == 0 && left % 4 != 0 ? 3 : std::min<int64_t>(4, left);
      switch (take) {
        case 1: attend_heads<1>(q, keys, values, rows, len, kvh, h, s, scale, out, sc); break;
        case 2: attend_heads<2>(q, keys, values, rows, len, kvh, h, s, scale, out, sc); break;
        case 3: attend_heads<3>(q, keys, values, rows, len, kvh, h, s, scale, out, sc); break;
        default: attend_heads<4>(q, keys, values, rows, len, kvh, h, s, scale, out, sc); break;
      }
      h += take;
    }
  }
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
