// Linear layers for x86 CPUs with AVX2 whose weights stay compressed in memory: GGUF's Q4_1 and
// Q8_0 block formats (32 weights per block along K), or fp16. Arithmetic is fp32 throughout:
// weights are expanded to fp32 in cache, never in memory, so a step moves a quarter (Q4_1) or half
// (fp16) of the bytes an fp32 weight would, and the model computes with exactly its stored values.
//
// Weights arrive tiled by `cpu_blockq.py`: 16 output rows (N) at a time, K-major inside a tile, so
// one k contributes a 16-wide vector to 16 outputs.
//   Q4_1: per (tile, block): 32 k x 8 bytes, byte j holding rows j (low nibble) and j + 8 (high),
//         so one widening load and a mask or a shift give each half of the tile;
//         w = d * q + m with d, m per (row, block)
//   Q8_0: per (tile, block): 32 k x 16 int8; w = d * q
//   F16:  per tile: K x 16 fp16
//
// Every output is one fused multiply-add chain over k in order, starting from zero, whichever path
// computes it, so a row's result does not depend on how many rows share the call: a request's
// logits do not change with the batch it is in.

#include "cpu_blockq.h"

#include <immintrin.h>
#include <omp.h>
#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <memory>
#include <vector>

namespace atenea {
namespace {

constexpr int64_t QK = 32;  // weights per block along K
constexpr int64_t NR = 16;  // output rows per tile
constexpr int64_t MR = 6;   // activation rows per register tile: 12 accumulators of 16 registers
// Up to this many rows, weights expand in registers for each row (a step that reads weights more
// than it computes); above it each tile expands once into a buffer that every row block reuses.
constexpr int64_t DIRECT_ROWS = 1;
// K rows of a tile expanded at a time (a multiple of 32): two buffers of 128 x 16 fp32 are 16 KiB,
// half of L1, the rest left to the activation rows.
constexpr int64_t K_CHUNK = 128;

// Expands the 16 weights of tile `t` at each k; F is the format, fixed at compile time.
template <Format F>
struct Expander {
  static constexpr int64_t ROW_BYTES = F == Q4_1 ? NR / 2 : F == Q8_0 ? NR : NR * 2;
  const uint8_t* q = nullptr;  // this tile's first weight
  const float* d = nullptr;    // this tile's first block scales
  const float* m = nullptr;
  __m256 d0, d1, m0, m1;

  Expander() = default;
  Expander(const Weights& w, int64_t t)
      : q(w.q + t * w.k * ROW_BYTES),
        d(w.d ? w.d + t * w.blocks() * NR : nullptr),
        m(w.m ? w.m + t * w.blocks() * NR : nullptr) {}

  // Block scales: once per 32 k (no-op for fp16).
  inline void block(int64_t kb) {
    if constexpr (F != F16) {
      d0 = _mm256_loadu_ps(d + kb * NR);
      d1 = _mm256_loadu_ps(d + kb * NR + 8);
      if constexpr (F == Q4_1) {
        m0 = _mm256_loadu_ps(m + kb * NR);
        m1 = _mm256_loadu_ps(m + kb * NR + 8);
      }
    }
  }

  // The weights at k (counted from the start of K; its block's scales loaded) as two vectors of 8.
  inline void row(int64_t k, __m256& lo, __m256& hi) const {
    const uint8_t* p = q + k * ROW_BYTES;
    if constexpr (F == Q4_1) {
      // Widened straight from memory: the low nibbles are rows 0-7, the high ones rows 8-15.
      const __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
      lo = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(bytes, _mm256_set1_epi32(0x0F))), d0, m0);
      hi = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(bytes, 4)), d1, m1);
    } else if constexpr (F == Q8_0) {
      const __m128i low = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
      const __m128i high = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8));
      lo = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(low)), d0);
      hi = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(high)), d1);
    } else {
      lo = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      hi = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16)));
    }
  }
};

// Calls f(k) for every k in [begin, end) in order, loading each block's scales into `es` first
// (begin and end on block boundaries).
template <Format F, int G, typename Fn>
inline void each_k(int64_t begin, int64_t end, Expander<F>* es, Fn&& f) {
  const int64_t block = F == F16 ? end - begin : QK;
  for (int64_t k0 = begin; k0 < end; k0 += block) {
    for (int g = 0; g < G; ++g) es[g].block(k0 / QK);
    for (int64_t k = k0; k < k0 + block; ++k) f(k);
  }
}

// Rows [0, ROWS) of x (stride ldx) times the expanded tile in `buf`, into y (stride ldy).
// Accumulators are named, not an array: GCC keeps an array of them in memory, storing each every k.
// With `prev` (stride ldp), the sums continue from the previous K chunk's, else from zero.
// Meanwhile it expands `count` K rows from k0 of another chunk through `e` into `next`: that work
// (integer widening, conversions) runs on other ports than these multiply-adds, so interleaved with
// them it comes almost free, where a separate pass would leave the FMA units idle.
template <int ROWS, Format F>
inline void tile_rows(const float* x, int64_t ldx, const float* buf, int64_t k_len, float* y, int64_t ldy,
                      const float* prev, int64_t ldp, Expander<F>* e, int64_t k0, int64_t count, float* next) {
  __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00;
  __m256 a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00;
#define ATENEA_LOAD(i)                              \
  if constexpr (ROWS > i) {                         \
    a##i##0 = _mm256_loadu_ps(prev + i * ldp);      \
    a##i##1 = _mm256_loadu_ps(prev + i * ldp + 8);  \
  }
  if (prev) {
    ATENEA_LOAD(0) ATENEA_LOAD(1) ATENEA_LOAD(2) ATENEA_LOAD(3) ATENEA_LOAD(4) ATENEA_LOAD(5)
  }
#undef ATENEA_LOAD
#define ATENEA_ROW(i)                                        \
  if constexpr (ROWS > i) {                                  \
    const __m256 xv = _mm256_broadcast_ss(x + i * ldx + k);  \
    a##i##0 = _mm256_fmadd_ps(xv, w0, a##i##0);              \
    a##i##1 = _mm256_fmadd_ps(xv, w1, a##i##1);              \
  }
  auto expand = [&](int64_t j) {
    if constexpr (F != F16) {
      if ((k0 + j) % QK == 0) e->block((k0 + j) / QK);
    }
    __m256 lo, hi;
    e->row(k0 + j, lo, hi);
    _mm256_store_ps(next + j * NR, lo);
    _mm256_store_ps(next + j * NR + 8, hi);
  };
  const int64_t both = std::min(k_len, count);
  int64_t k = 0;
  for (; k < both; ++k) {
    const __m256 w0 = _mm256_load_ps(buf + k * NR), w1 = _mm256_load_ps(buf + k * NR + 8);
    ATENEA_ROW(0) ATENEA_ROW(1) ATENEA_ROW(2) ATENEA_ROW(3) ATENEA_ROW(4) ATENEA_ROW(5)
    expand(k);
  }
  for (; k < k_len; ++k) {
    const __m256 w0 = _mm256_load_ps(buf + k * NR), w1 = _mm256_load_ps(buf + k * NR + 8);
    ATENEA_ROW(0) ATENEA_ROW(1) ATENEA_ROW(2) ATENEA_ROW(3) ATENEA_ROW(4) ATENEA_ROW(5)
  }
  for (int64_t j = both; j < count; ++j) expand(j);
#undef ATENEA_ROW
#define ATENEA_STORE(i)                               \
  if constexpr (ROWS > i) {                           \
    _mm256_storeu_ps(y + i * ldy, a##i##0);           \
    _mm256_storeu_ps(y + i * ldy + 8, a##i##1);       \
  }
  ATENEA_STORE(0) ATENEA_STORE(1) ATENEA_STORE(2) ATENEA_STORE(3) ATENEA_STORE(4) ATENEA_STORE(5)
#undef ATENEA_STORE
}

template <Format F>
void rows_block(int64_t rows, const float* x, int64_t ldx, const float* buf, int64_t k_len, float* y, int64_t ldy,
                const float* prev, int64_t ldp, Expander<F>* e = nullptr, int64_t k0 = 0, int64_t count = 0,
                float* next = nullptr) {
  switch (rows) {
    case 1: tile_rows<1, F>(x, ldx, buf, k_len, y, ldy, prev, ldp, e, k0, count, next); break;
    case 2: tile_rows<2, F>(x, ldx, buf, k_len, y, ldy, prev, ldp, e, k0, count, next); break;
    case 3: tile_rows<3, F>(x, ldx, buf, k_len, y, ldy, prev, ldp, e, k0, count, next); break;
    case 4: tile_rows<4, F>(x, ldx, buf, k_len, y, ldy, prev, ldp, e, k0, count, next); break;
    case 5: tile_rows<5, F>(x, ldx, buf, k_len, y, ldy, prev, ldp, e, k0, count, next); break;
    default: tile_rows<6, F>(x, ldx, buf, k_len, y, ldy, prev, ldp, e, k0, count, next); break;
  }
}

// Few rows: G tiles side by side (with G = 4, 8 independent chains hide the FMA latency), weights
// expanded in registers straight from memory for each activation row.
template <Format F, int G>
void direct_group(const Weights& w, int64_t t, const float* x, int64_t rows, float* y, int64_t n) {
  Expander<F> es[G];
  for (int g = 0; g < G; ++g) es[g] = Expander<F>(w, t + g);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * w.k;
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
    each_k<F, G>(0, w.k, es, [&](int64_t k) {
      const __m256 xv = _mm256_broadcast_ss(xr + k);
      __m256 lo, hi;
#define ATENEA_TILE(g)                           \
  if constexpr (G > g) {                         \
    es[g].row(k, lo, hi);                        \
    a##g##0 = _mm256_fmadd_ps(xv, lo, a##g##0);  \
    a##g##1 = _mm256_fmadd_ps(xv, hi, a##g##1);  \
  }
      ATENEA_TILE(0) ATENEA_TILE(1) ATENEA_TILE(2) ATENEA_TILE(3)
#undef ATENEA_TILE
    });
    float* yr = y + r * n + t * NR;
#define ATENEA_STORE(g)                                  \
  if constexpr (G > g) {                                 \
    _mm256_storeu_ps(yr + g * NR, a##g##0);              \
    _mm256_storeu_ps(yr + g * NR + 8, a##g##1);          \
  }
    ATENEA_STORE(0) ATENEA_STORE(1) ATENEA_STORE(2) ATENEA_STORE(3)
#undef ATENEA_STORE
  }
}

template <Format F>
void direct_tiles(const Weights& w, int64_t t0, int64_t tiles, const float* x, int64_t rows, float* y, int64_t n) {
  int64_t t = t0;
  for (; t + 4 <= t0 + tiles; t += 4) direct_group<F, 4>(w, t, x, rows, y, n);
  for (; t < t0 + tiles; ++t) direct_group<F, 1>(w, t, x, rows, y, n);
}

// Many rows: each tile expands, a K chunk at a time, into an fp32 buffer that stays in L1 while
// every row block uses it. Each sum still runs over k in order: a chunk resumes the previous one's
// sums, kept in `part` ([rows, 16], contiguous) until the last chunk writes y. Kept in y instead,
// they cost gate/up (3072 columns: a row stride that is a multiple of 4 KiB, so every row of a
// block falls in the same L1 set) a sixth of its speed at 512 rows (135 against 160 GFLOPS).
// Two buffers take turns: while the row blocks run over one chunk, the last of them expands the
// next chunk (this tile's next, or the next tile's first) into the other.
template <Format F>
void buffered_tiles(const Weights& w, int64_t t0, int64_t tiles, const float* x, int64_t rows, float* y, int64_t n,
                    float* buf, float* part) {
  float* bufs[2] = {buf, buf + K_CHUNK * NR};
  int current = 0;
  Expander<F> e(w, t0);
  each_k<F, 1>(0, std::min(K_CHUNK, w.k), &e, [&](int64_t k) {
    __m256 lo, hi;
    e.row(k, lo, hi);
    _mm256_store_ps(bufs[0] + k * NR, lo);
    _mm256_store_ps(bufs[0] + k * NR + 8, hi);
  });
  for (int64_t t = t0; t < t0 + tiles; ++t) {
    for (int64_t kc = 0; kc < w.k; kc += K_CHUNK) {
      const int64_t k_len = std::min(K_CHUNK, w.k - kc);
      int64_t next_t = t, next_k = kc + K_CHUNK;
      if (next_k >= w.k) next_t = t + 1, next_k = 0;
      const int64_t count = next_t < t0 + tiles ? std::min(K_CHUNK, w.k - next_k) : 0;
      if (next_t != t && count) e = Expander<F>(w, next_t);
      const bool last = kc + K_CHUNK >= w.k;
      float* out = last ? y + t * NR : part;
      const int64_t ld = last ? n : NR;
      const float* prev = kc > 0 ? part : nullptr;
      int64_t r = 0;
      for (; r + MR < rows; r += MR)
        rows_block<F>(MR, x + r * w.k + kc, w.k, bufs[current], k_len, out + r * ld, ld, prev ? prev + r * NR : nullptr,
                      NR);
      rows_block<F>(rows - r, x + r * w.k + kc, w.k, bufs[current], k_len, out + r * ld, ld,
                    prev ? prev + r * NR : nullptr, NR, &e, next_k, count, bufs[1 - current]);
      current = 1 - current;
    }
  }
}

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};

// Threads take groups of four tiles (the grain the few-rows path computes side by side) from a
// shared counter rather than a fixed half each: on a machine whose cores also serve HTTP, a thread
// that loses its core for a while leaves its share to the other instead of stalling the step.
template <Format F>
void share(const Weights& w, const float* x, int64_t rows, float* y, int64_t n, std::atomic<int64_t>& next) {
  // Two expansion buffers and the partial sums per thread (see buffered_tiles), kept for the
  // thread's life.
  thread_local std::unique_ptr<float, AlignedFree> buf(
      static_cast<float*>(std::aligned_alloc(64, 2 * K_CHUNK * NR * sizeof(float))));
  thread_local std::vector<float> part;
  if (rows > DIRECT_ROWS && w.k > K_CHUNK && part.size() < static_cast<size_t>(rows * NR))
    part.resize(static_cast<size_t>(rows * NR));
  const int64_t tiles = n / NR, groups = (tiles + 3) / 4;
  for (int64_t g = next++; g < groups; g = next++) {
    const int64_t t0 = g * 4, count = std::min<int64_t>(4, tiles - t0);
    if (rows <= DIRECT_ROWS)
      direct_tiles<F>(w, t0, count, x, rows, y, n);
    else
      buffered_tiles<F>(w, t0, count, x, rows, y, n, buf.get(), part.data());
  }
}

}  // namespace

void linear_share(const Weights& w, const float* x, int64_t rows, float* y, int64_t n, std::atomic<int64_t>& next) {
  switch (w.format) {
    case Q4_1: share<Q4_1>(w, x, rows, y, n, next); break;
    case Q8_0: share<Q8_0>(w, x, rows, y, n, next); break;
    default: share<F16>(w, x, rows, y, n, next); break;
  }
}

namespace {

void run(const Weights& w, const float* x, int64_t rows, float* y, int64_t n) {
  std::atomic<int64_t> next{0};
  // Plain OpenMP, not at::parallel_for: ATen's inline lazy thread-count init, compiled into this
  // library, would reset the calling thread's count to whatever another thread last set.
  if (n <= 4 * NR || omp_in_parallel() || omp_get_max_threads() == 1) {
    linear_share(w, x, rows, y, n, next);
  } else {
#pragma omp parallel
    linear_share(w, x, rows, y, n, next);
  }
}

torch::Tensor linear(const torch::Tensor& x, int64_t format, const torch::Tensor& q, const torch::Tensor& d,
                     const torch::Tensor& m, const c10::optional<torch::Tensor>& bias, int64_t n) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32, "x must be a 2-D float32 tensor");
  TORCH_CHECK(format >= Q4_1 && format <= F16, "unknown weight format");
  TORCH_CHECK(n % NR == 0 && x.size(1) % QK == 0, "N must be a multiple of 16 and K of 32");
  TORCH_CHECK(q.is_contiguous() && d.is_contiguous() && m.is_contiguous(), "weights must be contiguous");
  const int64_t k = x.size(1);
  const int64_t bits = format == Q4_1 ? 4 : format == Q8_0 ? 8 : 16;
  TORCH_CHECK(q.numel() * q.element_size() * 8 == n * k * bits, "packed weights do not match N x K");
  if (format != F16) TORCH_CHECK(d.numel() == n * k / QK && d.scalar_type() == torch::kFloat32, "block scales");
  if (format == Q4_1) TORCH_CHECK(m.numel() == n * k / QK && m.scalar_type() == torch::kFloat32, "block offsets");
  const auto xc = x.contiguous();
  const int64_t rows = x.size(0);
  auto y = torch::empty({rows, n}, x.options());
  const Weights w{static_cast<Format>(format), static_cast<const uint8_t*>(q.data_ptr()),
                  format == F16 ? nullptr : d.data_ptr<float>(), format == Q4_1 ? m.data_ptr<float>() : nullptr, k};
  const float* xp = xc.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  run(w, xp, rows, yp, n);
  if (bias) y.add_(*bias);
  return y;
}

}  // namespace

torch::Tensor linear_cpu(const torch::Tensor& x, int64_t format, const torch::Tensor& q, const torch::Tensor& d,
                         const torch::Tensor& m, const c10::optional<torch::Tensor>& bias, int64_t n) {
  return linear(x, format, q, d, m, bias, n);
}

}  // namespace atenea
