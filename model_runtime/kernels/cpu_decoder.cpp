// A decode step of a Llama model through all its layers in one call, on an AVX2 CPU: one query
// token per sequence, the shape of every step once prompts are in.
//
// Called op by op from Python, such a step on a small model spends a fifth of its time outside
// arithmetic: module calls, tensor allocations, the KV cache write, and an OpenMP fork and join
// for each of about ten kernels per layer. Here one OpenMP team runs the whole step, the phases of
// each layer separated by barriers: threads claim linear-layer tiles from a counter per projection
// and split rows or sequences between them elsewhere. Every phase works row by row (or sequence
// by sequence) as the separate kernels do, so a sequence's numbers still do not depend on the
// batch it is in.

#include "cpu_decoder.h"

#include <immintrin.h>
#include <omp.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>

#include "cpu_attention.h"
#include "cpu_rows.h"

namespace atenea {
namespace {

const float* floats(const torch::Tensor& t, int64_t numel, const char* what) {
  TORCH_CHECK(t.scalar_type() == torch::kFloat32 && t.is_contiguous() && t.device().is_cpu(), what,
              " must be a contiguous float32 CPU tensor");
  TORCH_CHECK(t.numel() == numel, what, " has ", t.numel(), " values, expected ", numel);
  return t.data_ptr<float>();
}

// x += y (+ bias): a projection's output, its bias added first as the separate kernels do.
inline void add_row(float* x, const float* y, const float* bias, int64_t n) {
  if (bias) {
    for (int64_t i = 0; i < n; ++i) x[i] += y[i] + bias[i];
  } else {
    for (int64_t i = 0; i < n; ++i) x[i] += y[i];
  }
}

// n values into a cache row: copied to an fp32 cache, rounded to nearest-even for an fp16 one (as
// torch's conversion rounds, so both paths fill the cache with the same bits).
inline void store_row(float* dst, const float* src, int64_t n) { std::memcpy(dst, src, n * sizeof(float)); }
inline void store_row(uint16_t* dst, const float* src, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; i < n; ++i) dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
}

inline void add_bias(float* y, const float* bias, int64_t n) {
  if (bias)
    for (int64_t i = 0; i < n; ++i) y[i] += bias[i];
}

}  // namespace

Decoder::Decoder(const std::vector<int64_t>& shape, double eps, int64_t block_size,
                 const std::vector<Linear>& linears, const std::vector<torch::Tensor>& norms,
                 const std::vector<torch::Tensor>& keys, const std::vector<torch::Tensor>& values)
    : block_size_(block_size), eps_(static_cast<float>(eps)) {
  TORCH_CHECK(shape.size() == 5, "shape: heads, kv_heads, head_dim, hidden, intermediate");
  heads_ = shape[0], kv_heads_ = shape[1], dim_ = shape[2], hidden_ = shape[3], intermediate_ = shape[4];
  TORCH_CHECK(heads_ % kv_heads_ == 0 && dim_ % 2 == 0 && block_size_ > 0, "head shapes");
  const size_t count = keys.size();
  TORCH_CHECK(values.size() == count && norms.size() == 2 * count && linears.size() == 4 * count,
              "4 linears, 2 norms, keys and values per layer");
  const int64_t q_size = heads_ * dim_, kv_size = kv_heads_ * dim_;
  // in -> out features of qkv, o, gate_up, down
  const int64_t in_out[4][2] = {
      {hidden_, q_size + 2 * kv_size}, {q_size, hidden_}, {hidden_, 2 * intermediate_}, {intermediate_, hidden_}};
  auto projection = [&](const Linear& l, int64_t in, int64_t out) {
    const auto& [format, q, d, m, bias, n] = l;
    TORCH_CHECK(format >= Q4_1 && format <= F16 && n == out && n % 16 == 0 && in % 32 == 0, "projection shape");
    const int64_t bits = format == Q4_1 ? 4 : format == Q8_0 ? 8 : 16;
    TORCH_CHECK(q.is_contiguous() && q.numel() * q.element_size() * 8 == n * in * bits, "packed weights");
    keep_.insert(keep_.end(), {q, d, m});
    Projection p{{static_cast<Format>(format), static_cast<const uint8_t*>(q.data_ptr()),
                  format == F16 ? nullptr : floats(d, n * in / 32, "block scales"),
                  format == Q4_1 ? floats(m, n * in / 32, "block offsets") : nullptr, in},
                 n, nullptr};
    if (bias) {
      keep_.push_back(*bias);
      p.bias = floats(*bias, n, "bias");
    }
    return p;
  };
  for (size_t l = 0; l < count; ++l) {
    TORCH_CHECK(keys[l].dim() == 3 && keys[l].size(1) == kv_heads_ && keys[l].size(2) == dim_ &&
                    values[l].sizes() == keys[l].sizes(),
                "caches are [slots, kv_heads, head_dim]");
    Layer layer{};
    Projection* ps[4] = {&layer.qkv, &layer.o, &layer.gate_up, &layer.down};
    for (int i = 0; i < 4; ++i) *ps[i] = projection(linears[4 * l + i], in_out[i][0], in_out[i][1]);
    layer.input_norm = floats(norms[2 * l], hidden_, "norm weight");
    layer.post_norm = floats(norms[2 * l + 1], hidden_, "norm weight");
    const auto dtype = keys[0].scalar_type();
    TORCH_CHECK((dtype == torch::kFloat32 || dtype == torch::kHalf) && keys[l].scalar_type() == dtype &&
                    values[l].scalar_type() == dtype && keys[l].is_contiguous() && values[l].is_contiguous() &&
                    keys[l].device().is_cpu() && values[l].device().is_cpu(),
                "caches are contiguous fp32 or fp16 CPU tensors, all of one dtype");
    half_cache_ = dtype == torch::kHalf;
    layer.keys = keys[l].data_ptr();
    layer.values = values[l].data_ptr();
    keep_.insert(keep_.end(), {norms[2 * l], norms[2 * l + 1], keys[l], values[l]});
    layers_.push_back(layer);
  }
  cache_slots_ = count ? keys[0].size(0) : 0;
}

void Decoder::forward(torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                      const torch::Tensor& slot_mapping, const torch::Tensor& block_tables,
                      const torch::Tensor& context_lens) const {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == hidden_, "x is [B, hidden]");
  const int64_t batch = x.size(0);
  float* xp = const_cast<float*>(floats(x, batch * hidden_, "x"));
  const float* cp = floats(cos, batch * dim_, "cos");
  const float* sp = floats(sin, batch * dim_, "sin");
  TORCH_CHECK(slot_mapping.scalar_type() == torch::kInt64 && slot_mapping.is_contiguous() &&
                  slot_mapping.numel() == batch,
              "slot_mapping is [B] int64");
  TORCH_CHECK(block_tables.scalar_type() == torch::kInt32 && block_tables.is_contiguous() &&
                  block_tables.dim() == 2 && block_tables.size(0) == batch,
              "block_tables is [B, W] int32");
  TORCH_CHECK(context_lens.scalar_type() == torch::kInt32 && context_lens.is_contiguous() &&
                  context_lens.numel() == batch,
              "context_lens is [B] int32");
  if (batch == 0 || layers_.empty()) return;
  const int64_t* slots = slot_mapping.data_ptr<int64_t>();
  for (int64_t r = 0; r < batch; ++r)
    TORCH_CHECK(slots[r] >= 0 && slots[r] < cache_slots_, "cache slot ", slots[r], " out of range");
  const int32_t* tables = block_tables.data_ptr<int32_t>();
  const int32_t* lens = context_lens.data_ptr<int32_t>();
  const int64_t width = block_tables.size(1);
  const int64_t q_size = heads_ * dim_, kv_size = kv_heads_ * dim_, qkv_n = q_size + 2 * kv_size;
  const AttentionShapes shapes{heads_, kv_heads_, dim_, width, block_size_};
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim_));

  // Activations of the step, each [B, ...].
  std::vector<float> normed(batch * hidden_), qkv(batch * qkv_n), attn(batch * q_size), proj(batch * hidden_),
      gate_up(batch * 2 * intermediate_), act(batch * intermediate_);
  const int64_t num_layers = static_cast<int64_t>(layers_.size());
  // One tile counter per projection of the step.
  std::unique_ptr<std::atomic<int64_t>[]> counters(new std::atomic<int64_t>[4 * num_layers]);
  for (int64_t i = 0; i < 4 * num_layers; ++i) counters[i].store(0);

  auto step = [&] {
    AttentionScratch scratch;
    for (int64_t l = 0; l < num_layers; ++l) {
      const Layer& layer = layers_[l];
      // The previous layer's MLP output joins the residual stream, then the input norm.
#pragma omp for schedule(static)
      for (int64_t r = 0; r < batch; ++r) {
        float* row = xp + r * hidden_;
        if (l > 0) add_row(row, proj.data() + r * hidden_, layers_[l - 1].down.bias, hidden_);
        rms_norm_row(row, layer.input_norm, hidden_, eps_, normed.data() + r * hidden_);
      }
      linear_share(layer.qkv.w, normed.data(), batch, qkv.data(), qkv_n, counters[4 * l]);
#pragma omp barrier
      // Rotate queries and keys, and write this token's key and value into its cache slot.
#pragma omp for schedule(static)
      for (int64_t r = 0; r < batch; ++r) {
        float* row = qkv.data() + r * qkv_n;
        add_bias(row, layer.qkv.bias, qkv_n);
        rope_row(row, cp + r * dim_, sp + r * dim_, heads_ + kv_heads_, dim_);
        if (half_cache_) {
          store_row(static_cast<uint16_t*>(layer.keys) + slots[r] * kv_size, row + q_size, kv_size);
          store_row(static_cast<uint16_t*>(layer.values) + slots[r] * kv_size, row + q_size + kv_size, kv_size);
        } else {
          store_row(static_cast<float*>(layer.keys) + slots[r] * kv_size, row + q_size, kv_size);
          store_row(static_cast<float*>(layer.values) + slots[r] * kv_size, row + q_size + kv_size, kv_size);
        }
      }
#pragma omp for schedule(dynamic, 1)
      for (int64_t b = 0; b < batch; ++b) {
        const float* q = qkv.data() + b * qkv_n;
        float* out = attn.data() + b * q_size;
        if (half_cache_)
          attend_sequence(q, static_cast<const uint16_t*>(layer.keys), static_cast<const uint16_t*>(layer.values),
                          tables + b * width, lens[b], shapes, scale, out, scratch);
        else
          attend_sequence(q, static_cast<const float*>(layer.keys), static_cast<const float*>(layer.values),
                          tables + b * width, lens[b], shapes, scale, out, scratch);
      }
      linear_share(layer.o.w, attn.data(), batch, proj.data(), hidden_, counters[4 * l + 1]);
#pragma omp barrier
#pragma omp for schedule(static)
      for (int64_t r = 0; r < batch; ++r) {
        float* row = xp + r * hidden_;
        add_row(row, proj.data() + r * hidden_, layer.o.bias, hidden_);
        rms_norm_row(row, layer.post_norm, hidden_, eps_, normed.data() + r * hidden_);
      }
      linear_share(layer.gate_up.w, normed.data(), batch, gate_up.data(), 2 * intermediate_, counters[4 * l + 2]);
#pragma omp barrier
#pragma omp for schedule(static)
      for (int64_t r = 0; r < batch; ++r) {
        float* gate = gate_up.data() + r * 2 * intermediate_;
        add_bias(gate, layer.gate_up.bias, 2 * intermediate_);
        silu_mul_row(gate, gate + intermediate_, intermediate_, act.data() + r * intermediate_);
      }
      linear_share(layer.down.w, act.data(), batch, proj.data(), hidden_, counters[4 * l + 3]);
#pragma omp barrier
    }
#pragma omp for schedule(static)
    for (int64_t r = 0; r < batch; ++r)
      add_row(xp + r * hidden_, proj.data() + r * hidden_, layers_.back().down.bias, hidden_);
  };
  // Plain OpenMP, as in cpu_blockq.cpp.
  if (omp_in_parallel() || omp_get_max_threads() == 1) {
    step();
  } else {
#pragma omp parallel
    step();
  }
}

}  // namespace atenea
