// Linear layers over compressed weights (see cpu_blockq.cpp for the layouts and the arithmetic).
#pragma once

#include <atomic>
#include <cstdint>

namespace atenea {

enum Format : int64_t { Q4_1 = 0, Q8_0 = 1, F16 = 2 };

struct Weights {
  Format format;
  const uint8_t* q;  // Q4_1 nibbles, Q8_0 int8 or fp16, as bytes
  const float* d;    // [N / 16, K / 32, 16] block scales (Q4_1, Q8_0)
  const float* m;    // [N / 16, K / 32, 16] block offsets (Q4_1)
  int64_t k;
  int64_t blocks() const { return k / 32; }
};

// y [rows, n] = x [rows, k] @ W.T, for the tile groups the calling thread claims from `next`: every
// thread of an OpenMP team calls it with the same counter (starting at 0), and together they
// compute all of y. A thread alone computes all of it.
void linear_share(const Weights& w, const float* x, int64_t rows, float* y, int64_t n, std::atomic<int64_t>& next);

}  // namespace atenea
