"""Linear layers on the CPU over compressed weights: GGUF's Q4_1 and Q8_0 blocks, or fp16.

`cpu_blockq.cpp` holds the kernels (AVX2, fp32 arithmetic, built by `cpu_extension`); this
module packs weights into their tiled layout and decides the format. A weight that is exactly a
block grid, `d * q + m` per block of 32 as a Q4_1 or Q8_0 GGUF leaves it after conversion (the
default model is one), keeps that form: nothing is lost, and a decode step reads a quarter of the
bytes of fp16. Other weights go to fp16 when the model runs with fp16 weights (the CPU default),
as the float path would round them. Without AVX2, a C++ compiler or a shape the tiles fit,
`cpu_linear` keeps torch's float kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch

from model_runtime.kernels.cpu_extension import load_kernels

QK = 32  # weights per block along K
TILE = 16  # output rows the kernels compute side by side
# A weight counts as a block grid when rebuilding it from the packed form is off by no more than
# this fraction of a block's step (plus a few float ulps): float rounding, not quantization.
GRID_TOLERANCE = 1e-3


class Format(IntEnum):  # as `cpu_blockq.cpp` numbers them
    Q4_1 = 0
    Q8_0 = 1
    F16 = 2


@dataclass(frozen=True)
class PackedWeight:
    """A [N, K] weight in the kernels' tiled layout (see `cpu_blockq.cpp`)."""

    format: Format
    q: torch.Tensor  # Q4_1: uint8 nibble pairs; Q8_0: int8; F16: float16
    d: torch.Tensor  # [N / 16, K / 32, 16] float32 block scales (empty for F16)
    m: torch.Tensor  # [N / 16, K / 32, 16] float32 block offsets (empty unless Q4_1)
    out_features: int


def fits(weight: torch.Tensor) -> bool:
    """Whether the kernels take a weight of this shape: N a multiple of 16, K of 32."""
    return weight.dim() == 2 and weight.shape[0] % TILE == 0 and weight.shape[1] % QK == 0


def _tiles(per_row: torch.Tensor) -> torch.Tensor:
    """[N, K/32, ...] per-(row, block) values -> [N/16, K/32, ..., 16]: 16 rows side by side."""
    n = per_row.shape[0]
    tiled = per_row.reshape(n // TILE, TILE, *per_row.shape[1:])
    return tiled.movedim(1, -1).contiguous()


def quantize_q4_1(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_1 of a [N, K] weight, as llama.cpp's reference quantizer computes it: per block of 32,
    m = min, d = (max - min) / 15, q = round((w - m) / d). Returns q [N, K/32, 32] uint8, d, m."""
    n, k = weight.shape
    blocks = weight.float().reshape(n, k // QK, QK)
    low = blocks.amin(-1)
    step = (blocks.amax(-1) - low) / 15
    inverse = torch.where(step > 0, 1 / step, torch.zeros_like(step))
    q = ((blocks - low[..., None]) * inverse[..., None]).round().clamp_(0, 15).to(torch.uint8)
    return q, step, low


def quantize_q8_0(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q8_0 of a [N, K] weight: per block of 32, d = max|w| / 127, q = round(w / d)."""
    n, k = weight.shape
    blocks = weight.float().reshape(n, k // QK, QK)
    step = blocks.abs().amax(-1) / 127
    inverse = torch.where(step > 0, 1 / step, torch.zeros_like(step))
    q = (blocks * inverse[..., None]).round().clamp_(-127, 127).to(torch.int8)
    return q, step


def on_grid(weight: torch.Tensor, rebuilt: torch.Tensor, step: torch.Tensor) -> bool:
    """Whether `rebuilt` [N, K/32, 32] equals `weight` up to float rounding, block by block."""
    blocks = weight.float().reshape(rebuilt.shape)
    error = (rebuilt - blocks).abs().amax(-1)
    rounding = 4 * torch.finfo(torch.float32).eps * blocks.abs().amax(-1)
    return bool((error <= GRID_TOLERANCE * step + rounding).all())


def pack(weight: torch.Tensor, half: bool) -> PackedWeight | None:
    """The weight in the first format that holds it exactly (Q4_1, then Q8_0), else in fp16 when
    `half` allows rounding it there; None when the kernels cannot take it."""
    if not fits(weight):
        return None
    n = weight.shape[0]
    empty = torch.empty(0)
    q, d, m = quantize_q4_1(weight)
    if on_grid(weight, q.float() * d[..., None] + m[..., None], d):
        tiled = _tiles(q)  # [N/16, K/32, 32, 16]
        nibbles = tiled[..., : TILE // 2] | (tiled[..., TILE // 2 :] << 4)  # rows j and j + 8
        return PackedWeight(Format.Q4_1, nibbles.contiguous(), _tiles(d), _tiles(m), n)
    q8, d8 = quantize_q8_0(weight)
    if on_grid(weight, q8.float() * d8[..., None], d8):
        return PackedWeight(Format.Q8_0, _tiles(q8), _tiles(d8), empty, n)
    if half:
        return PackedWeight(Format.F16, _tiles(weight.half()), empty, empty, n)
    return None


def linear(x: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    kernels = load_kernels()
    assert kernels is not None, "linear() needs the kernels: check load_kernels() first"
    return kernels.linear(x, int(w.format), w.q, w.d, w.m, bias, w.out_features)
