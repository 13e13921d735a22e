"""The decode roofline: a step reads every weight once plus each running sequence's KV cache, so
no engine decodes faster than `bytes per step / memory bandwidth` allows. The bandwidth is measured
here with a large device copy rather than taken from a data sheet."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from model_runtime.models.llama import LlamaShape


def copy_bandwidth(device: torch.device, gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes per second moved by a device-to-device copy, counting bytes read and written."""
    import torch

    n = int(gib * 2**30) // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: page faults, allocator
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        dst.copy_(src)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    del src, dst
    return 2 * n * 4 / best


def weight_bytes(shape: LlamaShape, bytes_per_weight: float) -> float:
    """Bytes of every weight a decode step reads (a tied output layer is read twice)."""
    h, layers = shape.hidden_size, shape.num_layers
    q, kv = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    per_layer = h * (q + 2 * kv) + q * h + 3 * h * shape.intermediate_size + 2 * h
    # The embedding lookup reads a row per token, but the output layer reads all of it.
    return bytes_per_weight * (layers * per_layer + shape.vocab_size * h + h)


def kv_bytes_per_token(shape: LlamaShape, bytes_per_value: float) -> float:
    return 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * bytes_per_value
