"""The CPU decode-attention kernel against its torch twin over a shuffled paged cache, the
elementwise kernels (RMSNorm, SwiGLU, rotary embedding) and the greedy pick against torch."""

from __future__ import annotations

import pytest
import torch

from model_runtime.kernels import cpu_extension
from model_runtime.kernels.paged_decode import paged_decode_reference
from tests.model_runtime.test_block_table_decode import BLOCK, random_cache

pytestmark = pytest.mark.skipif(
    not cpu_extension.cpu_supports_kernels(), reason="the kernels are for x86-64 CPUs with AVX2"
)


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16])
# Query heads per KV head: 1, 3, 4, 3 with a tail of dimensions, 7 (a pass of 4 and one of 3),
# 5 (4 and 1), 6 (3 and 3).
@pytest.mark.parametrize(
    ("heads", "kv_heads", "dim"),
    [(4, 4, 32), (9, 3, 64), (8, 2, 16), (6, 2, 20), (14, 2, 32), (10, 2, 24), (6, 1, 16)],
)
def test_the_kernel_matches_the_reference(
    heads: int, kv_heads: int, dim: int, cache_dtype: torch.dtype
) -> None:
    kernels = cpu_extension.load_kernels()
    assert kernels is not None
    lengths = [1, 7, 16, 17, 70, 300]
    q, keys, values, tables, lens = random_cache(heads, kv_heads, dim, lengths)
    keys, values = keys.to(cache_dtype), values.to(cache_dtype)
    q = q * 3  # peaked softmaxes as well as flat ones
    # The reference widens an fp16 cache's values exactly as the kernel must.
    expected = paged_decode_reference(q, keys, values, tables, lens, BLOCK, dim**-0.5)
    got = kernels.paged_decode(q, keys, values, tables, lens, BLOCK, dim**-0.5)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


def test_a_sequence_gets_the_same_answer_alone_and_in_a_batch() -> None:
    kernels = cpu_extension.load_kernels()
    q, keys, values, tables, lens = random_cache(9, 3, 64, [5, 40, 33, 128])
    together = kernels.paged_decode(q, keys, values, tables, lens, BLOCK, 0.125)
    for i in range(4):
        one = slice(i, i + 1)
        alone = kernels.paged_decode(q[one], keys, values, tables[one], lens[one], BLOCK, 0.125)
        assert torch.equal(alone[0], together[i])


@pytest.mark.parametrize("rows", [1, 3, 100])  # 100: the threaded path
@pytest.mark.parametrize("width", [64, 76])  # 76: a tail past the last full vector
def test_rms_norm_and_swiglu_match_torch(rows: int, width: int) -> None:
    kernels = cpu_extension.load_kernels()
    x, weight = torch.randn(rows, width) * 4, torch.randn(width)
    expected = torch.nn.functional.rms_norm(x, (width,), weight, 1e-5)
    torch.testing.assert_close(kernels.rms_norm(x, weight, 1e-5), expected, atol=1e-5, rtol=1e-5)
    gate_up = torch.randn(rows, 2 * width) * 30  # far into both tails of the sigmoid
    gate, up = gate_up.chunk(2, dim=-1)
    swiglu = torch.nn.functional.silu(gate) * up
    torch.testing.assert_close(kernels.silu_mul(gate_up), swiglu, atol=1e-4, rtol=1e-5)


def test_rope_in_place_matches_the_models_torch_rotation() -> None:
    from model_runtime.models.llama import apply_rope

    kernels = cpu_extension.load_kernels()
    t, heads, kv_heads, dim = 5, 4, 2, 24  # 12 = one vector and a tail per half
    qkv = torch.randn(t, (heads + 2 * kv_heads) * dim)
    angles = torch.rand(t, 1, dim // 2) * 6
    cos, sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()
    qk = qkv[:, : (heads + kv_heads) * dim].reshape(t, heads + kv_heads, dim)
    expected = apply_rope(qk, cos, sin)
    rotated = qkv.clone()
    kernels.rope_(rotated, cos.contiguous(), sin.contiguous(), heads + kv_heads)
    torch.testing.assert_close(rotated[:, : (heads + kv_heads) * dim].view(t, -1, dim), expected)
    assert torch.equal(rotated[:, (heads + kv_heads) * dim :], qkv[:, (heads + kv_heads) * dim :])  # values


@pytest.mark.parametrize("vocab", [5, 8, 49152, 49155])  # with and without a tail past the vectors
def test_argmax_rows_matches_torch_with_ties_nans_and_infinities(vocab: int) -> None:
    kernels = cpu_extension.load_kernels()
    g = torch.Generator().manual_seed(vocab)
    x = torch.randn(6, vocab, generator=g)
    x[1, :] = x[1].max()  # all tied: the first wins
    x[2, vocab // 2] = float("nan")  # NaN counts as the largest
    x[2, vocab - 1] = float("nan")
    x[3, :] = float("-inf")
    x[4, vocab - 1] = 1e9  # in the tail
    x[5, 0] = float("inf")
    x[5, vocab - 1] = float("inf")
    assert torch.equal(kernels.argmax_rows(x), x.argmax(dim=-1))
    strided = x[:, : vocab - 1]  # not contiguous
    assert torch.equal(kernels.argmax_rows(strided), strided.argmax(dim=-1))
