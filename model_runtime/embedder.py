"""Sentence embeddings from the served model: the final hidden states of a text, mean-pooled and
L2-normalised.

The text runs through the same layers as generation, with a scratch KV cache of its own length, so
it takes none of the engine's blocks. Attention is causal (the model's own), so each position sees
only what precedes it; mean pooling over all positions is the usual way to read a decoder-only
model as an embedder. Runs on the engine thread, between steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model_runtime.attention import AttentionMetadata, KVCache, PrefillSlice
from model_runtime.models.llama import LlamaModel


@torch.inference_mode()
def embed(model: LlamaModel, token_ids: list[int]) -> torch.Tensor:  # [hidden] float32, unit norm
    param = next(model.parameters())
    device = param.device
    dtype = model.embed_tokens.weight.dtype
    s = model.shape
    t = len(token_ids)
    caches = [
        KVCache(
            torch.empty(t, s.num_kv_heads, s.head_dim, dtype=dtype, device=device),
            torch.empty(t, s.num_kv_heads, s.head_dim, dtype=dtype, device=device),
        )
        for _ in range(s.num_layers)
    ]
    # One prefill chunk from position 0: plain causal attention over its own keys.
    meta = AttentionMetadata(
        slot_mapping=torch.arange(t, device=device),
        num_decodes=0,
        decode_slots=None,
        decode_mask=None,
        prefills=[PrefillSlice(0, t, torch.empty(0, dtype=torch.long, device=device), None)],
    )
    ids = torch.tensor(token_ids, dtype=torch.long, device=device)
    x = model.embed_tokens(ids)  # [T, hidden]
    cos, sin = model.rope(torch.arange(t, device=device), x.dtype)
    for layer, cache in zip(model.layers, caches, strict=True):
        x = layer(x, cos, sin, cache, meta)
    pooled = model.norm(x).float().mean(dim=0)
    return F.normalize(pooled, dim=0)
