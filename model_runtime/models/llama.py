"""The Llama family (Llama 2/3, Mistral, Qwen2, SmolLM) written for the paged cache.

RMSNorm, RoPE, grouped-query attention, SwiGLU; optional biases as the config asks. Q/K/V and
gate/up are packed into one matmul each. Hugging Face's implementation is the reference: parameter
names stay Hugging Face's so weights load by name, then get packed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model_runtime.attention import AttentionMetadata, KVCache, paged_attention
from model_runtime.kernels import fused_layer
from model_runtime.kernels.cpu_extension import load_kernels
from model_runtime.kernels.fused_layer import fused_kernels_enabled


@dataclass(frozen=True)
class LlamaShape:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool

    @classmethod
    def from_hf_config(cls, config: Any) -> LlamaShape:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        model_type = getattr(config, "model_type", "llama")
        attention_bias = bool(getattr(config, "attention_bias", False))
        return cls(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_layers=config.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            rms_norm_eps=config.rms_norm_eps,
            max_position_embeddings=config.max_position_embeddings,
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            # Qwen2 has biases on q/k/v only; Llama's attention_bias covers all four.
            qkv_bias=attention_bias or model_type == "qwen2",
            o_bias=attention_bias and model_type != "qwen2",
            mlp_bias=bool(getattr(config, "mlp_bias", False)),
        )


def rope_inv_freq(config: Any) -> tuple[torch.Tensor, float]:
    """Inverse frequencies and attention scaling, computed by transformers for every rope type."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = getattr(config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        base = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        return inv_freq, 1.0
    return ROPE_INIT_FUNCTIONS[rope_type](config, None)


def cpu_kernels(x: torch.Tensor) -> Any:
    """The C++ kernels module when `x` is an fp32 CPU tensor they can take, else None."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return None
    return load_kernels()


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        """The norm of `x`; with `add`, of `x += add` (the residual stream takes a layer's update)."""
        if fused_kernels_enabled(x) and x.dim() == 2:
            return fused_layer.rms_norm(x, self.weight, self.eps, add)
        if add is not None:
            x.add_(add)
        if x.dtype == torch.float32:
            kernels = cpu_kernels(x)
            if kernels is not None and x.dim() == 2:
                return kernels.rms_norm(x, self.weight, self.eps)
            # One fused kernel, bit-identical to the reference's arithmetic in fp32.
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # Lower precision: normalise in fp32 and cast back before the weight, as the reference does.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [T, H, D]; cos/sin: [T, 1, D] (Hugging Face's rotate-half layout)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, s: LlamaShape) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = s.num_heads, s.num_kv_heads, s.head_dim
        self.q_size = s.num_heads * s.head_dim
        self.kv_size = s.num_kv_heads * s.head_dim
        self.qkv_proj = nn.Linear(s.hidden_size, self.q_size + 2 * self.kv_size, bias=s.qkv_bias)
        self.o_proj = nn.Linear(self.q_size, s.hidden_size, bias=s.o_bias)
        self.scale = s.head_dim**-0.5
        self.heads = [s.num_heads, s.num_kv_heads, s.num_kv_heads]

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache, meta: AttentionMetadata
    ) -> torch.Tensor:
        t = x.shape[0]
        qkv = self.qkv_proj(x)
        if fused_kernels_enabled(qkv) and not self.head_dim & (self.head_dim - 1):
            # One launch rotates the queries and keys and writes the cache, instead of seven.
            fused_layer.rope_and_cache(
                qkv, cos, sin, cache.keys, cache.values, meta.slot_mapping, self.num_heads, self.num_kv_heads
            )
            q, k, v = qkv.view(t, -1, self.head_dim).split(self.heads, dim=1)
            out = paged_attention(q, k, v, cache, meta, self.scale, cached=True)
            return self.o_proj(out.reshape(t, self.q_size))
        kernels = cpu_kernels(qkv)
        if kernels is not None and qkv.is_contiguous() and cos.is_contiguous():
            # One pass over the rows, in place, instead of torch's five elementwise ops.
            kernels.rope_(qkv, cos, sin, self.num_heads + self.num_kv_heads)
            q, k, v = qkv.view(t, -1, self.head_dim).split(self.heads, dim=1)
        else:
            qk, v = qkv.split([self.q_size + self.kv_size, self.kv_size], dim=-1)
            # Queries and keys are rotated together: half the kernel launches of rotating each.
            qk = apply_rope(qk.view(t, self.num_heads + self.num_kv_heads, self.head_dim), cos, sin)
            q, k = qk.split([self.num_heads, self.num_kv_heads], dim=1)
            v = v.view(t, self.num_kv_heads, self.head_dim)
        out = paged_attention(q, k, v, cache, meta, self.scale)
        return self.o_proj(out.reshape(t, self.q_size))


class MLP(nn.Module):
    def __init__(self, s: LlamaShape) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(s.hidden_size, 2 * s.intermediate_size, bias=s.mlp_bias)
        self.down_proj = nn.Linear(s.intermediate_size, s.hidden_size, bias=s.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        if fused_kernels_enabled(gate_up):
            return self.down_proj(fused_layer.silu_mul(gate_up))
        kernels = cpu_kernels(gate_up)
        if kernels is not None and gate_up.dim() == 2:
            return self.down_proj(kernels.silu_mul(gate_up))
        gate, up = gate_up.chunk(2, dim=-1)
        # In place: both halves are views of a fresh projection nobody else holds.
        return self.down_proj(F.silu(gate, inplace=True).mul_(up))


class DecoderLayer(nn.Module):
    def __init__(self, s: LlamaShape) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.self_attn = Attention(s)
        self.post_attention_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.mlp = MLP(s)

    def forward(
        self,
        x: torch.Tensor,
        pending: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache,
        meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the residual stream and this layer's MLP output, still to be added to it.

        The residual stream `x` is one buffer, updated in place (it starts as a fresh embedding
        lookup). Each update is added by the norm that reads the sum next, which on a GPU does
        both in one kernel: the previous layer's MLP output (`pending`) by this layer's input norm.
        """
        h = self.self_attn(self.input_layernorm(x, pending), cos, sin, cache, meta)
        return x, self.mlp(self.post_attention_layernorm(x, h))


class LlamaModel(nn.Module):
    def __init__(self, shape: LlamaShape, inv_freq: torch.Tensor, rope_scaling: float = 1.0) -> None:
        super().__init__()
        self.shape = shape
        self.embed_tokens = nn.Embedding(shape.vocab_size, shape.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(shape) for _ in range(shape.num_layers))
        self.norm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.lm_head = nn.Linear(shape.hidden_size, shape.vocab_size, bias=False)
        self.tie_weights()
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.rope_scaling = rope_scaling

    def tie_weights(self) -> None:
        # Moving a module between devices can replace parameters one by one: tie again after.
        if self.shape.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]  # [T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # [T, 1, D]
        cos, sin = emb.cos(), emb.sin()
        if self.rope_scaling != 1.0:  # most rope types: two launches a step saved where it is 1
            cos, sin = cos * self.rope_scaling, sin * self.rope_scaling
        return cos.to(dtype), sin.to(dtype)

    def forward(
        self,
        input_ids: torch.Tensor,  # [T]
        positions: torch.Tensor,  # [T]
        caches: list[KVCache],
        meta: AttentionMetadata,
        logits_indices: torch.Tensor,  # [S] rows whose next-token logits are needed
    ) -> torch.Tensor:  # [S, V] float32
        x = self.hidden_states(input_ids, positions, caches, meta)
        x = self.norm(x.index_select(0, logits_indices))
        return self.lm_head(x).float()

    def hidden_states(
        self, input_ids: torch.Tensor, positions: torch.Tensor, caches: list[KVCache], meta: AttentionMetadata
    ) -> torch.Tensor:  # [T, hidden], before the final norm
        x = self.embed_tokens(input_ids)
        cos, sin = self.rope(positions, x.dtype)
        pending = None
        for layer, cache in zip(self.layers, caches, strict=True):
            x, pending = layer(x, pending, cos, sin, cache, meta)
        return x.add_(pending) if pending is not None else x

    def load_hf_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Loads Hugging Face-named tensors, packing q/k/v and gate/up as they arrive."""
        params = dict(self.named_parameters())
        packed = {
            "q_proj": ("qkv_proj", 0),
            "k_proj": ("qkv_proj", 1),
            "v_proj": ("qkv_proj", 2),
            "gate_proj": ("gate_up_proj", 0),
            "up_proj": ("gate_up_proj", 1),
        }
        s = self.shape
        qkv_sizes = [s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim, s.num_kv_heads * s.head_dim]
        gate_up_sizes = [s.intermediate_size, s.intermediate_size]
        loaded: set[str] = set()
        for name, tensor in weights:
            name = name.removeprefix("model.")
            if name.startswith("lm_head") and s.tie_word_embeddings:
                continue
            if "rotary_emb" in name:
                continue
            target, part = name, None
            for src, (dst, index) in packed.items():
                if f".{src}." in name:
                    target, part = name.replace(f".{src}.", f".{dst}."), index
                    break
            if target not in params:
                raise KeyError(f"unexpected weight {name!r}")
            param = params[target]
            with torch.no_grad():
                if part is None:
                    param.copy_(tensor)
                else:
                    sizes = qkv_sizes if "qkv_proj" in target else gate_up_sizes
                    offset = sum(sizes[:part])
                    param.narrow(0, offset, sizes[part]).copy_(tensor)
            loaded.add(f"{target}#{part}")
        missing = [n for n in params if not any(k.startswith(f"{n}#") for k in loaded)]
        if missing:
            raise KeyError(f"weights missing from the checkpoint: {missing[:5]}")
