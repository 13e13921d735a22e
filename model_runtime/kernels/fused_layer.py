"""A decoder layer's small operations, each one Triton launch on a GPU.

In plain torch a Llama layer's decode step is 32 kernel launches (counted with torch's profiler):
the bf16 RMSNorm alone is eight (upcast, square, mean, add, rsqrt, multiply, downcast, weight),
RoPE five, the two cache writes two, SwiGLU two, the residual adds two, besides the four matmuls
and attention. At decode sizes each is a few microseconds of launch and almost no work, so for a
small model they are most of a step even inside a CUDA graph (SmolLM2's 30 layers: about 960
launches a token). With these three kernels a layer is nine launches:

- `rms_norm`: optionally adds a pending update into the residual stream first (in place), then
  normalises it; one program per row.
- `rope_and_cache`: rotates the queries and keys inside the packed QKV projection in place and
  writes the keys and values into their cache slots; one program per (token, head).
- `silu_mul`: SwiGLU's `silu(gate) * up` from the packed gate/up projection.

Each rounds where the torch version rounds (the model's dtype after every torch op), so the
results match `*_reference` to the last bit or nearly: the references are the model's plain-torch
code, kept here as the kernels' specification and for the tests.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from model_runtime.kernels.paged_decode import triton_available

log = logging.getLogger(__name__)

# Per CUDA device index: whether its layers run the kernels, decided on first use. Asked about
# four times a layer by an eager step, so the answer is one dictionary lookup after that.
_ENABLED: dict[int, bool] = {}


def fused_kernels_enabled(x: torch.Tensor) -> bool:
    """Whether `x`'s layer runs these kernels: on a GPU with Triton where they pass a check on
    first use, unless ATENEA_FUSED_KERNELS=0 (which measures what they are worth)."""
    if not x.is_cuda:
        return False
    index = x.get_device()
    enabled = _ENABLED.get(index)
    if enabled is None:
        if torch.cuda.is_current_stream_capturing():
            return False  # a check cannot sync inside a capture; the engine never starts there
        wanted = os.environ.get("ATENEA_FUSED_KERNELS", "1") != "0" and triton_available()
        enabled = _ENABLED[index] = wanted and verify(x.device)
    return enabled


def verify(device: torch.device) -> bool:
    """Runs each kernel once on small bf16 inputs against its reference. A kernel that fails to
    compile or disagrees turns them all off for the device, with a warning: the plain torch
    operations are slower but right, and the server stays up."""
    try:
        mismatch = _self_check(device)
    except Exception:  # a Triton or driver error: compile failures surface here
        log.warning("fused layer kernels failed on %s; using plain torch operations", device, exc_info=True)
        return False
    if mismatch:
        log.warning("fused layer kernels disagree with torch on %s (%s); using plain torch", device, mismatch)
        return False
    return True


def _self_check(device: torch.device) -> str:
    """The name of the first kernel whose output is off by more than bf16 rounding, or ""."""
    generator = torch.Generator(device=device).manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=device).to(torch.bfloat16)

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        return torch.allclose(a.float(), b.float(), rtol=2e-2, atol=2e-2)

    x, add, weight = rand(3, 200), rand(3, 200), rand(200)
    x_ref = x.clone()
    if not close(rms_norm(x, weight, 1e-5, add), rms_norm_reference(x_ref, weight, 1e-5, add)):
        return "rms_norm"
    heads, kv_heads, dim = 4, 2, 64
    qkv, angles = rand(3, (heads + 2 * kv_heads) * dim), rand(3, 1, dim).float()
    cos, sin = angles.cos().to(torch.bfloat16), angles.sin().to(torch.bfloat16)
    caches = [torch.zeros(8, kv_heads, dim, dtype=torch.bfloat16, device=device) for _ in range(4)]
    slots = torch.tensor([5, 0, 7], device=device)
    qkv_ref = qkv.clone()
    rope_and_cache(qkv, cos, sin, caches[0], caches[1], slots, heads, kv_heads)
    rope_and_cache_reference(qkv_ref, cos, sin, caches[2], caches[3], slots, heads, kv_heads)
    if not (close(qkv, qkv_ref) and close(caches[0], caches[2]) and close(caches[1], caches[3])):
        return "rope_and_cache"
    gate_up = rand(3, 2 * 300)
    if not close(silu_mul(gate_up), silu_mul_reference(gate_up)):
        return "silu_mul"
    return ""


def rms_norm_reference(
    x: torch.Tensor, weight: torch.Tensor, eps: float, add: torch.Tensor | None = None
) -> torch.Tensor:
    """`x += add` (when given), then RMSNorm of `x`: normalised in fp32, cast back to x's dtype,
    then scaled by the weight in that dtype (Hugging Face's order)."""
    if add is not None:
        x.add_(add)
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def rope_and_cache_reference(
    qkv: torch.Tensor,  # [T, (H + 2 * KVH) * D]
    cos: torch.Tensor,  # [T, 1, D]
    sin: torch.Tensor,
    keys: torch.Tensor,  # [num_slots, KVH, D]
    values: torch.Tensor,
    slots: torch.Tensor,  # [T] long
    num_heads: int,
    num_kv_heads: int,
) -> None:
    """Rotates the queries and keys of `qkv` in place (rotate-half layout), and writes the keys and
    values into their cache slots."""
    t, d = qkv.shape[0], keys.shape[-1]
    heads = qkv.view(t, -1, d)
    qk = heads[:, : num_heads + num_kv_heads]
    half = d // 2
    rotated = torch.cat((-qk[..., half:], qk[..., :half]), dim=-1)
    qk.copy_(qk * cos + rotated * sin)
    k, v = heads[:, num_heads : num_heads + num_kv_heads], heads[:, num_heads + num_kv_heads :]
    keys.index_copy_(0, slots, k.to(keys.dtype))
    values.index_copy_(0, slots, v.to(values.dtype))


def silu_mul_reference(gate_up: torch.Tensor) -> torch.Tensor:  # [T, 2I] -> [T, I]
    gate, up = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, add: torch.Tensor | None = None
) -> torch.Tensor:
    """`rms_norm_reference` in one launch; `x` (and `add`) are [T, N] with contiguous rows."""
    rows, n = x.shape
    if x.stride(-1) != 1 or (add is not None and add.stride(-1) != 1):
        raise ValueError("rms_norm needs contiguous rows")
    out = torch.empty_like(x)
    block = _next_pow2(n)
    _kernels()["rms_norm"][(rows,)](
        x,
        add if add is not None else x,
        weight,
        out,
        x.stride(0),
        add.stride(0) if add is not None else 0,
        out.stride(0),
        n,
        eps,
        HAS_ADD=add is not None,
        BLOCK=block,
        num_warps=_warps(block),
    )
    return out


def rope_and_cache(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    slots: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
) -> None:
    """`rope_and_cache_reference` in one launch."""
    t, d = qkv.shape[0], keys.shape[-1]
    if d & (d - 1) or qkv.stride(-1) != 1 or keys.stride(-1) != 1 or keys.stride() != values.stride():
        raise ValueError("rope_and_cache needs a power-of-two head dimension and contiguous heads")
    cos, sin = cos.reshape(t, d), sin.reshape(t, d)
    _kernels()["rope_and_cache"][(t, num_heads + 2 * num_kv_heads)](
        qkv,
        cos,
        sin,
        keys,
        values,
        slots,
        qkv.stride(0),
        cos.stride(0),
        keys.stride(0),
        keys.stride(1),
        NUM_HEADS=num_heads,
        NUM_KV_HEADS=num_kv_heads,
        HEAD_DIM=d,
        num_warps=max(1, d // 64),  # a head is 64-128 elements: a warp or two, not the default four
        # x * cos + rotated * sin as torch computes it, two products and a sum each rounded: in
        # fp32 a fused multiply-add would round once and differ from the plain layer.
        enable_fp_fusion=False,
    )


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """`silu_mul_reference` in one launch; `gate_up` is [T, 2I] with contiguous rows."""
    rows, width = gate_up.shape
    if gate_up.stride(-1) != 1:
        raise ValueError("silu_mul needs contiguous rows")
    n = width // 2
    out = torch.empty(rows, n, dtype=gate_up.dtype, device=gate_up.device)
    block = min(_next_pow2(n), 1024)
    _kernels()["silu_mul"][(rows, -(-n // block))](
        gate_up, out, gate_up.stride(0), out.stride(0), n, BLOCK=block, num_warps=_warps(block)
    )
    return out


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _warps(block: int) -> int:
    return max(1, min(8, block // 256))


_KERNELS: dict[str, Any] | None = None


def _kernels() -> dict[str, Any]:
    """Compiles (or, under TRITON_INTERPRET=1, interprets) the kernels on first use."""
    global _KERNELS
    if _KERNELS is not None:
        return _KERNELS
    import triton
    import triton.language as tl

    @triton.jit
    def rms_norm_kernel(
        x_ptr, add_ptr, w_ptr, out_ptr, stride_x, stride_add, stride_out, n, eps,
        HAS_ADD: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n
        dtype = x_ptr.dtype.element_ty
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
        if HAS_ADD:
            update = tl.load(add_ptr + row * stride_add + cols, mask=mask, other=0.0)
            x = (x.to(tl.float32) + update.to(tl.float32)).to(dtype)  # rounded as torch's add is
            tl.store(x_ptr + row * stride_x + cols, x, mask=mask)
        x32 = x.to(tl.float32)
        normed = x32 * tl.rsqrt(tl.sum(x32 * x32, axis=0) / n + eps)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        out = w * normed.to(dtype).to(tl.float32)
        tl.store(out_ptr + row * stride_out + cols, out.to(dtype), mask=mask)

    @triton.jit
    def rope_and_cache_kernel(
        qkv_ptr, cos_ptr, sin_ptr, k_cache_ptr, v_cache_ptr, slots_ptr,
        stride_t, stride_cos, stride_slot, stride_head,
        NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    ):  # fmt: skip
        t = tl.program_id(0).to(tl.int64)
        head = tl.program_id(1)
        dims = tl.arange(0, HEAD_DIM)
        ptrs = qkv_ptr + t * stride_t + head * HEAD_DIM + dims
        dtype = qkv_ptr.dtype.element_ty
        x = tl.load(ptrs)
        slot = tl.load(slots_ptr + t).to(tl.int64)
        first_half = dims < HEAD_DIM // 2
        if head < NUM_HEADS + NUM_KV_HEADS:  # a query or key head: rotate in place
            partner = tl.load(ptrs + tl.where(first_half, HEAD_DIM // 2, -(HEAD_DIM // 2))).to(tl.float32)
            rotated = tl.where(first_half, -partner, partner).to(dtype).to(tl.float32)
            cos = tl.load(cos_ptr + t * stride_cos + dims).to(tl.float32)
            sin = tl.load(sin_ptr + t * stride_cos + dims).to(tl.float32)
            # x * cos + rotated * sin, each product rounded to the model's dtype as torch does.
            first = (x.to(tl.float32) * cos).to(dtype).to(tl.float32)
            second = (rotated * sin).to(dtype).to(tl.float32)
            x = (first + second).to(dtype)
            tl.store(ptrs, x)
            if head >= NUM_HEADS:  # a key head: into the cache too
                cache = k_cache_ptr + slot * stride_slot + (head - NUM_HEADS) * stride_head + dims
                tl.store(cache, x.to(k_cache_ptr.dtype.element_ty))
        else:  # a value head: into the cache as it is
            kv_head = head - NUM_HEADS - NUM_KV_HEADS
            cache = v_cache_ptr + slot * stride_slot + kv_head * stride_head + dims
            tl.store(cache, x.to(v_cache_ptr.dtype.element_ty))

    @triton.jit
    def silu_mul_kernel(in_ptr, out_ptr, stride_in, stride_out, n, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < n
        dtype = in_ptr.dtype.element_ty
        gate = tl.load(in_ptr + row * stride_in + cols, mask=mask, other=0.0).to(tl.float32)
        up = tl.load(in_ptr + row * stride_in + n + cols, mask=mask, other=0.0).to(tl.float32)
        activated = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
        tl.store(out_ptr + row * stride_out + cols, (activated * up).to(dtype), mask=mask)

    _KERNELS = {
        "rms_norm": rms_norm_kernel,
        "rope_and_cache": rope_and_cache_kernel,
        "silu_mul": silu_mul_kernel,
    }
    return _KERNELS
