"""Attention over the paged KV cache.

A step's tokens arrive packed as one `[T, ...]` run: first one token for each decoding sequence,
then the prefill chunks one after another. New keys/values are written into their cache slots, then
each group attends to what its sequences have cached: all decodes in one batched call, each prefill
chunk in its own call (there are few per step: the token budget bounds them).

Decodes take one of two paths. With `block_tables` set, attention reads the cache through each
sequence's block table: a Triton kernel on a GPU (nothing gathered, a fixed launch shape that CUDA
graphs capture), a C++ kernel on an AVX2 CPU (`cpu_attention.cpp`), their plain-torch twin
elsewhere. Otherwise every decode's context slots arrive padded to one length and are gathered for
one batched SDPA call, the faster way on a CPU without the C++ kernel.

Prefill chunks likewise: with `prefill_tables` set, one call reads every chunk's context through
its block table (a Triton kernel on a GPU); otherwise each chunk gets an SDPA call of its own,
over its own keys or over its gathered context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model_runtime.kernels.cpu_extension import load_kernels
from model_runtime.kernels.paged_decode import paged_decode, paged_decode_reference
from model_runtime.kernels.paged_prefill import paged_prefill, paged_prefill_reference


@dataclass
class PrefillSlice:
    start: int  # first row of this chunk in the step's packed tokens
    length: int  # query tokens in the chunk
    context_slots: torch.Tensor  # [L] cache slots of every key the chunk sees, in position order
    mask: torch.Tensor | None  # [length, L] bool (True = attend); None when plainly causal (L == length)


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] cache slot that receives each new token's K/V
    num_decodes: int  # the first rows are one decode token per sequence
    decode_slots: torch.Tensor | None  # [num_decodes, Lmax] slots of each decode's context, padded
    decode_mask: torch.Tensor | None  # [num_decodes, 1, 1, Lmax] bool, False on padding; None: no padding
    prefills: list[PrefillSlice]
    # The block-table path for decodes (see the module's docstring); None selects slot gathering.
    block_tables: torch.Tensor | None = None  # [num_decodes, W] int32, rows padded with any block
    context_lens: torch.Tensor | None = None  # [num_decodes] int32: tokens each decode attends to
    block_size: int = 0
    # The block-table path for prefill chunks; None selects one SDPA call per `prefills` entry.
    prefill_tables: torch.Tensor | None = None  # [C, W] int32
    prefill_q_starts: torch.Tensor | None = None  # [C] int32: first row of each chunk
    prefill_q_lens: torch.Tensor | None = None  # [C] int32
    prefill_ctx_starts: torch.Tensor | None = None  # [C] int32: cached tokens before each chunk
    prefill_max_len: int = 0  # the longest chunk


class KVCache:
    """One layer's paged cache: `[num_slots, kv_heads, head_dim]` for keys and for values.

    A slot is `block * block_size + offset`; the block tables live in `kv_cache.BlockManager`.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys = keys
        self.values = values


def paged_attention(
    q: torch.Tensor,  # [T, H, D]
    k: torch.Tensor,  # [T, KVH, D]
    v: torch.Tensor,  # [T, KVH, D]
    cache: KVCache,
    meta: AttentionMetadata,
    scale: float,
    cached: bool = False,  # the new keys and values are in their cache slots already
) -> torch.Tensor:  # [T, H, D]
    # A cache stored in a narrower type (fp16 on a CPU computing in fp32) rounds what it keeps; every
    # read below widens it back, and a chunk's own keys are rounded the same way (`_stored`).
    if not cached:
        cache.keys.index_copy_(0, meta.slot_mapping, k.to(cache.keys.dtype))
        cache.values.index_copy_(0, meta.slot_mapping, v.to(cache.values.dtype))
    n = meta.num_decodes
    if n and not meta.prefills and meta.prefill_tables is None:
        # The steady state: decodes only, no copy into a shared output.
        return _decodes(q, cache, meta, scale)
    out = torch.empty_like(q)
    if n:
        out[:n] = _decodes(q[:n], cache, meta, scale)
    if meta.prefill_tables is not None:
        args = (
            out,
            q,
            cache.keys,
            cache.values,
            meta.prefill_tables,
            meta.prefill_q_starts,
            meta.prefill_q_lens,
            meta.prefill_ctx_starts,
            meta.block_size,
            scale,
        )
        if q.is_cuda:
            paged_prefill(*args, meta.prefill_max_len)
        else:
            paged_prefill_reference(*args)
        return out
    for p in meta.prefills:
        out[p.start : p.start + p.length] = _prefill(q[p.start : p.start + p.length], k, v, cache, p, scale)
    return out


def _decodes(q: torch.Tensor, cache: KVCache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    if meta.block_tables is not None:
        assert meta.context_lens is not None
        args = (q, cache.keys, cache.values, meta.block_tables, meta.context_lens, meta.block_size, scale)
        if q.is_cuda:
            return paged_decode(*args)
        kernels = load_kernels()
        return kernels.paged_decode(*args) if kernels is not None else paged_decode_reference(*args)
    assert meta.decode_slots is not None
    return _decode(q, cache, meta.decode_slots, meta.decode_mask, scale)


def _decode(
    q: torch.Tensor,  # [B, H, D]
    cache: KVCache,
    slots: torch.Tensor,  # [B, L]
    mask: torch.Tensor | None,  # [B, 1, 1, L]
    scale: float,
) -> torch.Tensor:
    b, length = slots.shape
    flat = slots.reshape(-1)
    keys = cache.keys.index_select(0, flat).to(q.dtype).view(b, length, *cache.keys.shape[1:]).transpose(1, 2)
    values = (
        cache.values.index_select(0, flat)
        .to(q.dtype)
        .view(b, length, *cache.values.shape[1:])
        .transpose(1, 2)
    )
    # keys/values: [B, KVH, L, D]; q: [B, H, 1, D]
    out = F.scaled_dot_product_attention(
        q.unsqueeze(2), keys, values, attn_mask=mask, scale=scale, enable_gqa=True
    )
    return out.squeeze(2)


def _prefill(
    q: torch.Tensor,  # [n, H, D]
    k: torch.Tensor,
    v: torch.Tensor,
    cache: KVCache,
    p: PrefillSlice,
    scale: float,
) -> torch.Tensor:
    if p.mask is None:
        # No cached prefix: the chunk's own keys are all it sees, so skip the gather.
        keys = _stored(k[p.start : p.start + p.length], cache.keys.dtype)
        values = _stored(v[p.start : p.start + p.length], cache.values.dtype)
    else:
        keys = cache.keys.index_select(0, p.context_slots).to(q.dtype)
        values = cache.values.index_select(0, p.context_slots).to(q.dtype)
    # -> [1, H|KVH, n|L, D]
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0),
        keys.transpose(0, 1).unsqueeze(0),
        values.transpose(0, 1).unsqueeze(0),
        attn_mask=p.mask,
        is_causal=p.mask is None,
        scale=scale,
        enable_gqa=True,
    )
    return out.squeeze(0).transpose(0, 1)


def _stored(x: torch.Tensor, cache_dtype: torch.dtype) -> torch.Tensor:
    """`x` as the cache holds it: rounded through a narrower cache type, in x's own type."""
    return x if cache_dtype == x.dtype else x.to(cache_dtype).to(x.dtype)
