"""Prefill attention that reads the paged KV cache through the block tables (Triton, GPU).

All of a step's prefill chunks go in one launch per layer: one program per (chunk, tile of query
rows, query head). Each program walks its chunk's block table from position 0 up to its last
query row with an online softmax and a causal mask by position, so a chunk that continues a
cached prefix (a shared system prompt, an earlier chunk of a long prompt) reads that prefix where
it lies instead of gathering it, and no step builds a mask tensor. The chunk's own keys and values
must already be in the cache.

One launch for every chunk also keeps the GPU off the per-shape paths of the library attention
kernels: prompt lengths vary with every request.

`paged_prefill_reference` is the same computation in plain torch, for CPUs and for tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Query rows and key tokens per tile: tensor-core shapes that fit a 128-wide head in registers.
TILE_M = 64
TILE_N = 64


def paged_prefill_reference(
    out: torch.Tensor,  # [T, H, D], written at the chunks' rows
    q: torch.Tensor,  # [T, H, D]
    keys: torch.Tensor,  # [num_slots, KVH, D]
    values: torch.Tensor,
    block_tables: torch.Tensor,  # [C, W] int
    q_starts: torch.Tensor,  # [C] first row of each chunk in q
    q_lens: torch.Tensor,  # [C] query rows of each chunk
    ctx_starts: torch.Tensor,  # [C] position of each chunk's first query row (cached tokens before it)
    block_size: int,
    scale: float,
) -> None:
    for c in range(block_tables.shape[0]):
        row, n, before = int(q_starts[c]), int(q_lens[c]), int(ctx_starts[c])
        length = before + n
        blocks = block_tables[c, : -(-length // block_size)].long()
        slots = (blocks[:, None] * block_size + torch.arange(block_size, device=q.device)).view(-1)[:length]
        k = keys.index_select(0, slots).transpose(0, 1)  # [KVH, L, D]
        v = values.index_select(0, slots).transpose(0, 1)
        visible = (
            torch.arange(length, device=q.device)[None, :]
            <= torch.arange(before, length, device=q.device)[:, None]
        )
        out[row : row + n] = F.scaled_dot_product_attention(
            q[row : row + n].transpose(0, 1), k, v, attn_mask=visible, scale=scale, enable_gqa=True
        ).transpose(0, 1)


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
        q_starts_ptr,
        q_lens_ptr,
        ctx_starts_ptr,
        scale,
        stride_qt,
        stride_qh,
        stride_ot,
        stride_oh,
        stride_cs,
        stride_ch,
        stride_tb,
        GROUP: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        BLOCK_SIZE: tl.constexpr,
        TILE_M: tl.constexpr,
        TILE_N: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        chunk = tl.program_id(0)
        tile = tl.program_id(1)
        head = tl.program_id(2)
        n = tl.load(q_lens_ptr + chunk)
        if tile * TILE_M >= n:
            return  # the grid is sized for the longest chunk
        row0 = tl.load(q_starts_ptr + chunk)
        before = tl.load(ctx_starts_ptr + chunk)
        kv_head = head // GROUP
        rows = tile * TILE_M + tl.arange(0, TILE_M)
        row_ok = rows < n
        q_pos = before + rows  # position of each query row
        dims = tl.arange(0, HEAD_DIM)
        q = tl.load(
            q_ptr + (row0 + rows.to(tl.int64))[:, None] * stride_qt + head * stride_qh + dims[None, :],
            mask=row_ok[:, None],
            other=0.0,
        )  # [M, D]
        m_i = tl.full([TILE_M], float("-inf"), tl.float32)
        l_i = tl.zeros([TILE_M], tl.float32)
        acc = tl.zeros([TILE_M, HEAD_DIM], tl.float32)
        # Keys up to the tile's last valid row; position 0 is visible to every row, so no row's
        # running maximum stays -inf past the first key tile.
        end = tl.minimum(before + n, before + (tile + 1) * TILE_M)
        offsets = tl.arange(0, TILE_N)
        for start in range(0, end, TILE_N):
            pos = start + offsets
            valid = pos < end
            block = tl.load(tables_ptr + chunk * stride_tb + pos // BLOCK_SIZE, mask=valid, other=0)
            slot = block.to(tl.int64) * BLOCK_SIZE + pos % BLOCK_SIZE
            kv_offsets = slot[:, None] * stride_cs + kv_head * stride_ch + dims[None, :]
            k = tl.load(k_ptr + kv_offsets, mask=valid[:, None], other=0.0)  # [N, D]
            scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # [M, N]
            visible = valid[None, :] & (pos[None, :] <= q_pos[:, None])
            scores = tl.where(visible, scores, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(scores, axis=1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(scores - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(v_ptr + kv_offsets, mask=valid[:, None], other=0.0)  # [N, D]
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
        out = acc / l_i[:, None]
        tl.store(
            out_ptr + (row0 + rows.to(tl.int64))[:, None] * stride_ot + head * stride_oh + dims[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=row_ok[:, None],
        )

    _KERNEL = kernel
    return kernel


def paged_prefill(
    out: torch.Tensor,  # [T, H, D], written at the chunks' rows
    q: torch.Tensor,  # [T, H, D], head_dim contiguous
    keys: torch.Tensor,  # [num_slots, KVH, D], head_dim contiguous
    values: torch.Tensor,
    block_tables: torch.Tensor,  # [C, W] int32
    q_starts: torch.Tensor,  # [C] int32
    q_lens: torch.Tensor,  # [C] int32, each >= 1
    ctx_starts: torch.Tensor,  # [C] int32
    block_size: int,
    scale: float,
    max_q_len: int,  # the longest chunk: sizes the grid without reading q_lens back
) -> None:
    heads, head_dim = q.shape[1], q.shape[2]
    kv_heads = keys.shape[1]
    if head_dim & (head_dim - 1) or head_dim < 16 or keys.stride(-1) != 1 or q.stride(-1) != 1:
        raise ValueError("paged_prefill needs a power-of-two (>= 16), contiguous head dimension")
    if keys.stride() != values.stride() or out.stride(-1) != 1:
        raise ValueError("keys and values must share one layout, and out's head dimension be contiguous")
    chunks = block_tables.shape[0]
    grid = (chunks, -(-max_q_len // TILE_M), heads)
    _kernel()[grid](
        out,
        q,
        keys,
        values,
        block_tables,
        q_starts,
        q_lens,
        ctx_starts,
        scale,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        keys.stride(0),
        keys.stride(1),
        block_tables.stride(0),
        GROUP=heads // kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size,
        TILE_M=TILE_M,
        TILE_N=TILE_N,
        # fp32 caches (parity tests) keep full precision; TF32 would round the inputs.
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )
