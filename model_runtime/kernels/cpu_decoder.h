// A decode step through every Llama layer in one call (see cpu_decoder.cpp).
#pragma once

#include <torch/extension.h>

#include <tuple>
#include <vector>

#include "cpu_blockq.h"

namespace atenea {

class Decoder {
 public:
  // A packed projection as `cpu_blockq.py` lays it out: (format, q, d, m, bias or None, out_features).
  using Linear = std::tuple<int64_t, torch::Tensor, torch::Tensor, torch::Tensor, c10::optional<torch::Tensor>, int64_t>;

  // shape: heads, kv_heads, head_dim, hidden, intermediate. Per layer, in order: linears holds
  // qkv, o, gate_up and down; norms the input and post-attention weights; keys and values its
  // [slots, kv_heads, head_dim] caches, fp32 or fp16. The tensors are kept alive by the decoder.
  Decoder(const std::vector<int64_t>& shape, double eps, int64_t block_size, const std::vector<Linear>& linears,
          const std::vector<torch::Tensor>& norms, const std::vector<torch::Tensor>& keys,
          const std::vector<torch::Tensor>& values);

  // x [B, hidden]: the embeddings of one token per sequence, turned in place into the residual
  // stream after the last layer. cos, sin [B, head_dim]; slot_mapping [B] int64: the cache slot of
  // each token; block_tables [B, W] and context_lens [B] int32, the current token included.
  void forward(torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
               const torch::Tensor& slot_mapping, const torch::Tensor& block_tables,
               const torch::Tensor& context_lens) const;

 private:
  struct Projection {
    Weights w;
    int64_t n;
    const float* bias;  // nullptr when the layer has none
  };
  struct Layer {
    Projection qkv, o, gate_up, down;
    const float* input_norm;
    const float* post_norm;
    void* keys;  // fp32 or fp16 (half_cache_), [slots, kv_heads, head_dim]
    void* values;
  };

  int64_t heads_, kv_heads_, dim_, hidden_, intermediate_, block_size_, cache_slots_ = 0;
  float eps_;
  bool half_cache_ = false;
  std::vector<Layer> layers_;
  std::vector<torch::Tensor> keep_;  // what the raw pointers above point into
};

}  // namespace atenea
