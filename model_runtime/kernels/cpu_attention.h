// Decode attention over the paged KV cache (see cpu_attention.cpp).
#pragma once

#include <cstdint>
#include <vector>

namespace atenea {

struct AttentionShapes {
  int64_t heads, kv_heads, dim, width, block_size;  // width: entries per block-table row
};

// Per-thread buffers, reused from one sequence to the next.
struct AttentionScratch {
  std::vector<float> scores;
  std::vector<int64_t> rows;
};

// One sequence's query token (`heads` x `dim` at q) against the `len` positions its block table
// holds in the [slots, kv_heads, dim] caches, fp32 or fp16 (IEEE half bits); writes `heads` x
// `dim` fp32 at out. A sequence is one unit of work: its KV heads share each cache row, which stays
// in cache between them.
void attend_sequence(const float* q, const float* keys, const float* values, const int32_t* table, int64_t len,
                     const AttentionShapes& s, float scale, float* out, AttentionScratch& scratch);
void attend_sequence(const float* q, const uint16_t* keys, const uint16_t* values, const int32_t* table,
                     int64_t len, const AttentionShapes& s, float scale, float* out, AttentionScratch& scratch);

}  // namespace atenea
