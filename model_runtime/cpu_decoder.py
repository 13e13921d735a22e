"""Decode-only steps on an AVX2 CPU in one C++ call through every layer (`cpu_decoder.cpp`).

The CPU's counterpart of `decode_graphs.py`: once prompts are in, every step is one token per
sequence, and a small model's step called op by op from Python spends a fifth of its time outside
arithmetic. The C++ decoder runs all layers in one OpenMP team over the same packed weights, KV
cache and kernels as the op-by-op path; the embedding lookup, the rotary angles, the final norm
and the output layer stay here. Steps with prompt chunks keep the op-by-op path.
"""

from __future__ import annotations

from typing import Any

import torch

from model_runtime.attention import AttentionMetadata, KVCache
from model_runtime.kernels.cpu_extension import load_kernels
from model_runtime.models.cpu_linear import CpuLinear
from model_runtime.models.llama import LlamaModel


class CpuDecoder:
    def __init__(self, model: LlamaModel, decoder: Any) -> None:
        self.model = model
        self._decoder = decoder

    @classmethod
    def build(cls, model: LlamaModel, caches: list[KVCache], block_size: int) -> CpuDecoder | None:
        """The decoder for `model`, or None where the kernels are missing or a projection is not
        in their packed form (then every step takes the op-by-op path)."""
        kernels = load_kernels()
        cache = caches[0].keys
        if kernels is None or cache.dtype not in (torch.float32, torch.float16) or cache.device.type != "cpu":
            return None
        linears = []
        norms = []
        for layer in model.layers:
            attention, mlp = layer.self_attn, layer.mlp
            for proj in (attention.qkv_proj, attention.o_proj, mlp.gate_up_proj, mlp.down_proj):
                if not isinstance(proj, CpuLinear) or proj.blockq is None:
                    return None
                packed = proj.blockq
                linears.append(
                    (int(packed.format), packed.q, packed.d, packed.m, proj.bias, packed.out_features)
                )
            norms += [layer.input_layernorm.weight.detach(), layer.post_attention_layernorm.weight.detach()]
        s = model.shape
        shape = [s.num_heads, s.num_kv_heads, s.head_dim, s.hidden_size, s.intermediate_size]
        decoder = kernels.Decoder(
            shape,
            s.rms_norm_eps,
            block_size,
            linears,
            norms,
            [c.keys for c in caches],
            [c.values for c in caches],
        )
        return cls(model, decoder)

    def run(
        self,
        input_ids: torch.Tensor,  # [B]
        positions: torch.Tensor,  # [B]
        meta: AttentionMetadata,  # decodes only, through block tables
        logits_indices: torch.Tensor,  # [S]
    ) -> torch.Tensor:  # [S, V] float32
        assert meta.block_tables is not None and meta.context_lens is not None and not meta.prefills
        model = self.model
        x = model.embed_tokens(input_ids)
        cos, sin = model.rope(positions, x.dtype)
        self._decoder.forward(x, cos, sin, meta.slot_mapping, meta.block_tables, meta.context_lens)
        return model.lm_head(model.norm(x.index_select(0, logits_indices))).float()
