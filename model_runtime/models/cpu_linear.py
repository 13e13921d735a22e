"""Linear layers laid out for fast inference on a CPU, with fp32 activations.

Torch's default CPU matmul goes through MKL, which on this class of machine (AMD EPYC, AVX2)
reaches a third of what oneDNN does with a weight reordered ahead of time: on 2 cores, the
49k-row output layer of SmolLM2 at 16 rows takes 34 ms with MKL and 11 ms packed.

A decode step with few rows is bound by reading the weights from memory, not by arithmetic, so
`half_weights` keeps them as fp16 too, and steps of up to `FEW_ROWS` rows use FBGEMM's fp16-weight
GEMM: a whole SmolLM2 step at one row takes 20 ms that way against 33 ms in fp32. Larger steps are
bound by arithmetic, where oneDNN's fp32 kernel is faster (85 ms against 114 ms at 32 rows). Both
paths then hold the same values: the oneDNN weight is packed from the fp16-rounded weight, so the
batch size never changes which weights a request is computed with, only the summation order.

Where the AVX2 kernels of `kernels.cpu_blockq` build, they replace both: weights that are exactly a
GGUF block grid (the default model's) stay in that 4- or 8-bit form, others go to fp16, and one
kernel serves every row count, faster than either library at each and with a summation order that
does not depend on the batch.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from model_runtime.kernels import cpu_blockq
from model_runtime.kernels.cpu_extension import load_kernels

# oneDNN picks its kernel by the row count it packed for; 16 serves batched steps well.
PACKED_FOR_ROWS = 16
# Up to this many rows a step reads weights more than it computes: the fp16 path wins.
FEW_ROWS = 8
# FBGEMM's fp16 entry points carry a deprecation notice; they are the fastest kernels torch has
# for fp16 weights on AVX2, and `fp16_weights_available` guards their removal.
warnings.filterwarnings("ignore", message=r"fbgemm_.*fp16.* is deprecated")


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def fp16_weights_available() -> bool:
    return (
        hasattr(torch, "fbgemm_pack_gemm_matrix_fp16")
        and "fbgemm" in torch.backends.quantized.supported_engines
    )


class CpuLinear(nn.Module):
    def __init__(self, linear: nn.Linear, half_weights: bool, blockq: bool = False) -> None:
        super().__init__()
        weight = linear.weight.detach()
        out_features = weight.shape[0]
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.blockq = cpu_blockq.pack(weight, half_weights) if blockq else None
        self.half = None
        self.packed = None
        if self.blockq is not None:
            return  # the kernels' packed copy is the only one kept
        if half_weights:
            weight = weight.half().float()  # the values both paths compute with
        if half_weights and fp16_weights_available():
            self.half = torch.fbgemm_pack_gemm_matrix_fp16(weight)
            # FBGEMM's fp16 GEMM takes its bias as a tensor, never None.
            self.half_bias = self.bias if self.bias is not None else torch.zeros(out_features)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACKED_FOR_ROWS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [T, in] -> [T, out]
        if self.blockq is not None:
            return cpu_blockq.linear(x, self.blockq, self.bias)
        if self.half is not None and x.shape[0] <= FEW_ROWS:
            return torch.fbgemm_linear_fp16_weight(x, self.half, self.half_bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def use_cpu_linears(model: nn.Module, half_weights: bool) -> int:
    """Replaces every fp32 nn.Linear in `model` by a CpuLinear; returns how many it replaced."""
    blockq = load_kernels() is not None
    half_weights = half_weights and (blockq or fp16_weights_available())
    linears = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear)
        and child.weight.dtype == torch.float32
        and child.weight.device.type == "cpu"
    ]
    for parent, name, child in linears:
        setattr(parent, name, CpuLinear(child, half_weights, blockq))
    return len(linears)


def weight_formats(model: nn.Module) -> list[str]:
    """The formats the CPU linears of `model` hold their weights in (Q4_1, Q8_0, F16, fp16, fp32)."""
    formats = set()
    for module in model.modules():
        if isinstance(module, CpuLinear):
            if module.blockq is not None:
                formats.add(module.blockq.format.name)
            else:
                formats.add("fp16" if module.half is not None else "fp32")
    return sorted(formats)
