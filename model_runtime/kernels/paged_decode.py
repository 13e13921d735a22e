"""Decode attention that reads the paged KV cache through the block tables (Triton, GPU).

One program per (sequence, KV head) walks that sequence's block table a tile of tokens at a time
with an online softmax, so no step gathers anyone's KV into a padded tensor and the launch has the
same shape whatever the context lengths are: CUDA graphs can capture it. Every query head of a
GQA group shares the program, so each KV byte is read once; the group is padded to 16 rows for
`tl.dot` (decode is bound by reading the cache, the wasted tensor-core work is free).

`paged_decode_reference` is the same computation in plain torch, for CPUs and for tests.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
import torch.nn.functional as F

# Tokens per tile: enough bytes in flight per program without spilling registers.
TILE_TOKENS = 64
MIN_DOT_ROWS = 16


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None  # ~50 us a call: asked once


def paged_decode_reference(
    q: torch.Tensor,  # [B, H, D]
    keys: torch.Tensor,  # [num_slots, KVH, D]
    values: torch.Tensor,  # [num_slots, KVH, D]
    block_tables: torch.Tensor,  # [B, W] int
    context_lens: torch.Tensor,  # [B] int
    block_size: int,
    scale: float,
) -> torch.Tensor:  # [B, H, D]
    out = torch.empty_like(q)
    for b in range(q.shape[0]):
        length = int(context_lens[b])
        blocks = block_tables[b, : -(-length // block_size)].long()
        slots = (blocks[:, None] * block_size + torch.arange(block_size, device=q.device)).view(-1)[:length]
        k = keys.index_select(0, slots).to(q.dtype).transpose(0, 1)  # [KVH, L, D]
        v = values.index_select(0, slots).to(q.dtype).transpose(0, 1)
        out[b] = F.scaled_dot_product_attention(
            q[b].unsqueeze(1), k, v, scale=scale, enable_gqa=True
        ).squeeze(1)
    return out


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


_KERNEL = None


def _kernel():  # noqa: ANN202 - a triton.JITFunction; triton is imported only where it is used
    """Compiles (or, under TRITON_INTERPRET=1, interprets) the kernel on first use."""
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(
        out_ptr,
        q_ptr,
        k_ptr,
        v_ptr,
        tables_ptr,
        lens_ptr,
        scale,
        stride_qb,
        stride_qh,
        stride_ob,
        stride_oh,
        stride_cs,
        stride_ch,
        stride_tb,
        GROUP: tl.constexpr,
        GROUP_ROWS: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        BLOCK_SIZE: tl.constexpr,
        TILE: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        b = tl.program_id(0)
        kv_head = tl.program_id(1)
        length = tl.load(lens_ptr + b)
        rows = tl.arange(0, GROUP_ROWS)
        dims = tl.arange(0, HEAD_DIM)
        heads = kv_head * GROUP + rows
        row_ok = rows < GROUP
        q = tl.load(
            q_ptr + b * stride_qb + heads[:, None] * stride_qh + dims[None, :],
            mask=row_ok[:, None],
            other=0.0,
        )  # [G, D]
        m_i = tl.full([GROUP_ROWS], float("-inf"), tl.float32)
        l_i = tl.zeros([GROUP_ROWS], tl.float32)
        acc = tl.zeros([GROUP_ROWS, HEAD_DIM], tl.float32)
        offsets = tl.arange(0, TILE)
        for start in range(0, length, TILE):
            pos = start + offsets
            valid = pos < length
            block = tl.load(tables_ptr + b * stride_tb + pos // BLOCK_SIZE, mask=valid, other=0)
            slot = block.to(tl.int64) * BLOCK_SIZE + pos % BLOCK_SIZE
            kv_offsets = slot[:, None] * stride_cs + kv_head * stride_ch + dims[None, :]
            k = tl.load(k_ptr + kv_offsets, mask=valid[:, None], other=0.0)  # [TILE, D]
            scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # [G, TILE]
            scores = tl.where(valid[None, :], scores, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(scores, axis=1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(scores - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(v_ptr + kv_offsets, mask=valid[:, None], other=0.0)  # [TILE, D]
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
        out = acc / l_i[:, None]
        tl.store(
            out_ptr + b * stride_ob + heads[:, None] * stride_oh + dims[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=row_ok[:, None],
        )

    _KERNEL = kernel
    return kernel


def paged_decode(
    q: torch.Tensor,  # [B, H, D]
    keys: torch.Tensor,  # [num_slots, KVH, D], head_dim contiguous
    values: torch.Tensor,
    block_tables: torch.Tensor,  # [B, W] int32
    context_lens: torch.Tensor,  # [B] int32, each >= 1
    block_size: int,
    scale: float,
) -> torch.Tensor:  # [B, H, D]
    batch, heads, head_dim = q.shape
    kv_heads = keys.shape[1]
    group = heads // kv_heads
    if head_dim & (head_dim - 1) or keys.stride(-1) != 1 or q.stride(-1) != 1:
        raise ValueError("paged_decode needs a power-of-two, contiguous head dimension")
    if keys.stride() != values.stride():
        raise ValueError("keys and values must share one layout")
    out = torch.empty_like(q)
    _kernel()[(batch, kv_heads)](
        out,
        q,
        keys,
        values,
        block_tables,
        context_lens,
        scale,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        keys.stride(0),
        keys.stride(1),
        block_tables.stride(0),
        GROUP=group,
        GROUP_ROWS=max(MIN_DOT_ROWS, _next_pow2(group)),
        HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size,
        TILE=TILE_TOKENS,
        # fp32 caches (parity tests) keep full precision; TF32 would round the inputs.
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )
    return out
