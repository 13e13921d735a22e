"""The CPU linear kernels: exact formats chosen only where exact, results equal to float64 matmuls
over the same weights, and each row's result the same whatever the batch around it."""

from __future__ import annotations

import pytest
import torch

from model_runtime.kernels import cpu_blockq, cpu_extension
from model_runtime.kernels.cpu_blockq import Format
from model_runtime.models.cpu_linear import CpuLinear

pytestmark = pytest.mark.skipif(
    not cpu_extension.cpu_supports_kernels(), reason="the kernels are for x86-64 CPUs with AVX2"
)


def q4_1_grid(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """Weights as llama.cpp's Q4_1 quantizer leaves them: each block holds q = 0 and q = 15."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n, k // 32, 32), generator=g).float()
    q[..., 3], q[..., 17] = 0, 15
    d = torch.rand(n, k // 32, 1, generator=g) * 0.01 + 1e-3
    m = -torch.rand(n, k // 32, 1, generator=g) * 0.08
    return (q * d + m).reshape(n, k)


def q8_0_grid(n: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-127, 128, (n, k // 32, 32), generator=g).float()
    q[..., 5] = -127
    d = torch.rand(n, k // 32, 1, generator=g) * 1e-3 + 1e-5
    return (q * d).reshape(n, k)


def float_weights(n: int, k: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 0.05


def test_the_kernels_build_on_this_machine() -> None:
    assert cpu_extension.load_kernels() is not None


@pytest.mark.parametrize(
    ("make", "half", "expected"),
    [
        (q4_1_grid, False, Format.Q4_1),
        (q8_0_grid, False, Format.Q8_0),
        (float_weights, True, Format.F16),
        (float_weights, False, None),  # fp32 weights asked for and not a grid: the float path
    ],
)
def test_pack_picks_the_exact_format(make, half: bool, expected: Format | None) -> None:
    packed = cpu_blockq.pack(make(64, 96), half)
    assert (packed.format if packed else None) == expected


def test_a_q4_1_grid_that_moved_by_a_rounding_is_still_q4_1_but_by_a_step_is_not() -> None:
    w = q4_1_grid(32, 64)
    assert cpu_blockq.pack(w * (1 + 1e-7), half=False).format == Format.Q4_1
    nudged = w.clone()
    nudged[0, 1] += 0.3 * (w[0, :32].max() - w[0, :32].min()) / 15
    packed = cpu_blockq.pack(nudged, half=True)
    assert packed is not None and packed.format == Format.F16


def test_shapes_the_kernels_do_not_take_stay_on_the_float_path() -> None:
    assert cpu_blockq.pack(q4_1_grid(24, 64), half=True) is None  # N not a multiple of 16
    assert cpu_blockq.pack(torch.randn(32, 48), half=True) is None  # K not a multiple of 32


@pytest.mark.parametrize("make", [q4_1_grid, q8_0_grid, float_weights])
# Tiles per group of 4: 4 + 1 + 1, 4 + 1, 3; K chunks of 128: 1, 2 (the last partial), 3.
@pytest.mark.parametrize(("n", "k"), [(96, 64), (80, 160), (48, 320)])
def test_linear_equals_a_float64_matmul_over_the_same_weights(make, n: int, k: int) -> None:
    weight = make(n, k)
    packed = cpu_blockq.pack(weight, half=True)
    assert packed is not None
    stored = weight.half().float() if packed.format == Format.F16 else weight
    bias = torch.randn(n)
    for rows in (1, 2, 5, 6, 7, 16, 37):
        x = torch.randn(rows, k)
        got = cpu_blockq.linear(x, packed, bias)
        expected = (x.double() @ stored.double().T + bias.double()).float()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [q4_1_grid, q8_0_grid, float_weights])
def test_a_rows_result_does_not_depend_on_the_rows_beside_it(make) -> None:
    packed = cpu_blockq.pack(make(96, 320), half=True)  # K in three chunks, the last one short
    x = torch.randn(37, 320)
    together = cpu_blockq.linear(x, packed, None)
    for i in (0, 6, 17, 36):
        assert torch.equal(cpu_blockq.linear(x[i : i + 1], packed, None)[0], together[i])
        assert torch.equal(cpu_blockq.linear(x[i : i + 4], packed, None)[0], together[i])


def test_a_non_contiguous_input_is_read_correctly() -> None:
    packed = cpu_blockq.pack(q4_1_grid(32, 64), half=False)
    wide = torch.randn(5, 128)
    x = wide[:, ::2]
    expected = cpu_blockq.linear(x.contiguous(), packed, None)
    torch.testing.assert_close(cpu_blockq.linear(x, packed, None), expected)


def test_cpu_linear_keeps_only_the_packed_copy_and_computes_the_layer() -> None:
    linear = torch.nn.Linear(64, 48)
    with torch.no_grad():
        linear.weight.copy_(q4_1_grid(48, 64))
    layer = CpuLinear(linear, half_weights=True, blockq=True)
    assert layer.blockq is not None and layer.blockq.format == Format.Q4_1
    assert layer.packed is None and layer.half is None
    x = torch.randn(3, 64)
    torch.testing.assert_close(layer(x), linear(x), rtol=1e-5, atol=1e-5)


def test_the_default_model_keeps_its_gguf_formats_exactly(default_model_path) -> None:
    """The built-in model is a Q4_1 GGUF with a Q8_0 embedding: its layers pack as exactly that."""
    from model_runtime.models.loader import load_model

    model, _ = load_model(default_model_path, torch.device("cpu"), torch.float32, half_weights=True)
    formats = {
        name: module.blockq.format for name, module in model.named_modules() if isinstance(module, CpuLinear)
    }
    assert formats.pop("lm_head") == Format.Q8_0
    assert formats and set(formats.values()) == {Format.Q4_1}
