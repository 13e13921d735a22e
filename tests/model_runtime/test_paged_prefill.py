"""Prefill chunks that read the KV cache through block tables: the Triton kernel (run by Triton's
interpreter on the CPU), its torch twin, and the twin against plain causal attention."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model_runtime.kernels.paged_prefill import paged_prefill_reference

BLOCK = 16
ROOT = Path(__file__).resolve().parents[2]


def random_chunks(heads: int, kv_heads: int, dim: int, chunks: list[tuple[int, int]], seed: int = 0):
    """A shuffled paged cache holding each chunk's whole context (`before` cached tokens, then its
    `n` own), and the chunks' queries packed after two decode-like rows the kernel must not touch."""
    g = torch.Generator().manual_seed(seed)
    lengths = [before + n for before, n in chunks]
    num_blocks = sum(-(-n // BLOCK) for n in lengths) + 3
    keys = torch.randn(num_blocks * BLOCK, kv_heads, dim, generator=g)
    values = torch.randn(num_blocks * BLOCK, kv_heads, dim, generator=g)
    order = torch.randperm(num_blocks, generator=g).tolist()
    tables = torch.zeros(len(chunks), max(-(-n // BLOCK) for n in lengths), dtype=torch.int32)
    for i, n in enumerate(lengths):
        for j in range(-(-n // BLOCK)):
            tables[i, j] = order.pop()
    q_lens = torch.tensor([n for _, n in chunks], dtype=torch.int32)
    q_starts = (2 + torch.cumsum(q_lens, 0) - q_lens).to(torch.int32)
    ctx_starts = torch.tensor([before for before, _ in chunks], dtype=torch.int32)
    q = torch.randn(2 + int(q_lens.sum()), heads, dim, generator=g)
    return q, keys, values, tables, q_starts, q_lens, ctx_starts


@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(4, 4, 32), (9, 3, 64)])
def test_reference_without_a_prefix_is_causal_attention(heads: int, kv_heads: int, dim: int) -> None:
    q, keys, values, tables, starts, lens, before = random_chunks(heads, kv_heads, dim, [(0, 37), (0, 5)])
    out = torch.full_like(q, 7.0)
    paged_prefill_reference(out, q, keys, values, tables, starts, lens, before, BLOCK, 0.3)
    for c in range(2):
        row, n = int(starts[c]), int(lens[c])
        slots = (tables[c, :, None].long() * BLOCK + torch.arange(BLOCK)).view(-1)[:n]
        expected = F.scaled_dot_product_attention(
            q[row : row + n].transpose(0, 1),
            keys[slots].transpose(0, 1),
            values[slots].transpose(0, 1),
            is_causal=True,
            scale=0.3,
            enable_gqa=True,
        ).transpose(0, 1)
        torch.testing.assert_close(out[row : row + n], expected, atol=1e-5, rtol=0)
    assert (out[:2] == 7.0).all()  # rows outside the chunks are left alone


INTERPRETED_CHECK = """
import sys, torch
from tests.model_runtime.test_paged_prefill import BLOCK, random_chunks
from model_runtime.kernels.paged_prefill import paged_prefill, paged_prefill_reference
heads, kv_heads, dim = map(int, sys.argv[1:])
# Around the kernel's 64-row and 64-token tiles; with and without a cached prefix.
chunks = [(0, 1), (0, 64), (0, 65), (17, 1), (64, 63), (100, 130)]
q, keys, values, tables, starts, lens, before = random_chunks(heads, kv_heads, dim, chunks, seed=1)
out = torch.full_like(q, 7.0)
paged_prefill(out, q, keys, values, tables, starts, lens, before, BLOCK, dim**-0.5, int(lens.max()))
expected = torch.full_like(q, 7.0)
paged_prefill_reference(expected, q, keys, values, tables, starts, lens, before, BLOCK, dim**-0.5)
print((out - expected).abs().max().item())
"""


@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(4, 4, 32), (9, 3, 64)])
def test_triton_kernel_matches_reference(heads: int, kv_heads: int, dim: int) -> None:
    """In a fresh interpreter: torch imports triton, and triton reads TRITON_INTERPRET when imported."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    args = [sys.executable, "-c", INTERPRETED_CHECK, str(heads), str(kv_heads), str(dim)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert float(done.stdout.strip().splitlines()[-1]) < 1e-5


def test_runner_block_table_path_matches_the_gathering_path_on_mixed_steps() -> None:
    """The same steps through both paths (the torch twins of the GPU kernels here): a decode, a
    prompt's first chunk, and the chunk that continues it over its cached first part."""
    from model_runtime.api import SamplingParams
    from model_runtime.kv_cache import BlockManager
    from model_runtime.model_runner import ModelRunner
    from model_runtime.scheduler import Batch, ScheduledChunk
    from model_runtime.sequence import Sequence
    from tests.model_runtime.test_block_table_decode import tiny_native_and_reference

    model, reference = tiny_native_and_reference()
    prompts = [torch.randint(0, 97, (n,)).tolist() for n in (9, 30, 11)]
    results = []
    for block_tables in (False, True):
        runner = ModelRunner(model, num_blocks=32, block_size=4, cuda_graphs=False)
        runner.block_table_decodes = runner.block_table_prefills = block_tables
        blocks = BlockManager(32, 4)
        seqs = [
            Sequence(f"r{i}", list(p), len(p), SamplingParams(), max_total_tokens=64)
            for i, p in enumerate(prompts)
        ]
        for s in seqs:
            blocks.allocate(s, s.num_prompt_tokens)
        first, _ = runner.run(Batch(prefills=[ScheduledChunk(seqs[0], 0, 9), ScheduledChunk(seqs[1], 0, 13)]))
        seqs[0].token_ids.append(5)
        blocks.allocate(seqs[0], 10)
        # seqs[0] decodes, seqs[1] continues over its 13 cached tokens, seqs[2] starts.
        second, _ = runner.run(
            Batch(
                decodes=[ScheduledChunk(seqs[0], 9, 1)],
                prefills=[ScheduledChunk(seqs[1], 13, 17), ScheduledChunk(seqs[2], 0, 11)],
            )
        )
        logits = [first, second]
        results.append(logits)
    for gathered, tabled in zip(*results, strict=True):
        torch.testing.assert_close(tabled, gathered, atol=1e-4, rtol=0)
    # And the continued prompt agrees with transformers run on the whole of it.
    expected = reference(torch.tensor([prompts[1]])).logits[0, -1]
    torch.testing.assert_close(results[1][1][1], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("num_chunks", [1, 2, 3, 4, 5])
def test_every_prefill_step_falls_in_one_triton_specialization(num_chunks: int) -> None:
    """Triton compiles a variant per class of argument (a pointer 16-byte aligned or not, an
    integer divisible by 16 or not): whatever the number of chunks and their tables' lengths, the
    prefill metadata's pointers are aligned and the tables' row stride divisible by 16, so no
    step of a new shape compiles the kernel again mid-serving (half a second on a GPU)."""
    from model_runtime.api import SamplingParams
    from model_runtime.kv_cache import BlockManager
    from model_runtime.model_runner import ModelRunner
    from model_runtime.scheduler import Batch, ScheduledChunk
    from model_runtime.sequence import Sequence
    from tests.model_runtime.test_block_table_decode import tiny_native_and_reference

    model, _ = tiny_native_and_reference()
    runner = ModelRunner(model, num_blocks=64, block_size=4, cuda_graphs=False)
    blocks = BlockManager(64, 4)
    seqs = [
        Sequence(f"r{i}", list(range(1, 3 + 5 * i)), 2 + 5 * i, SamplingParams(), max_total_tokens=64)
        for i in range(num_chunks)
    ]
    for s in seqs:
        blocks.allocate(s, s.num_prompt_tokens)
    meta = runner._prefill_tables(Batch(prefills=[ScheduledChunk(s, 0, s.num_prompt_tokens) for s in seqs]))
    for name in ("prefill_q_starts", "prefill_q_lens", "prefill_ctx_starts", "prefill_tables"):
        assert meta[name].data_ptr() % 16 == 0, name
    assert meta["prefill_tables"].stride(0) % 16 == 0
    assert meta["prefill_q_lens"].tolist() == [s.num_prompt_tokens for s in seqs]
    assert meta["prefill_ctx_starts"].tolist() == [0] * num_chunks
    for s, row in zip(seqs, meta["prefill_tables"].tolist(), strict=True):
        assert row[: len(s.block_table)] == s.block_table
