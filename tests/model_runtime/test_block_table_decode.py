"""Decodes that read the KV cache through block tables: the Triton kernel, its torch twin, and the
static buffers that CUDA graphs replay (run eagerly here, so the padding logic is covered on a CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from model_runtime.api import SamplingParams
from model_runtime.attention import KVCache, _decode
from model_runtime.decode_graphs import DecodeGraphs, bucket_sizes
from model_runtime.kernels.paged_decode import paged_decode_reference
from model_runtime.kv_cache import BlockManager
from model_runtime.model_runner import ModelRunner
from model_runtime.models.llama import LlamaModel
from model_runtime.models.loader import build_model, prepare_for_inference
from model_runtime.scheduler import Batch, ScheduledChunk
from model_runtime.sequence import Sequence

BLOCK = 16
ROOT = Path(__file__).resolve().parents[2]


def random_cache(heads: int, kv_heads: int, dim: int, lengths: list[int], seed: int = 0):
    """A shuffled paged cache holding one context per length, and the decode queries."""
    g = torch.Generator().manual_seed(seed)
    num_blocks = sum(-(-n // BLOCK) for n in lengths) + 3
    keys = torch.randn(num_blocks * BLOCK, kv_heads, dim, generator=g)
    values = torch.randn(num_blocks * BLOCK, kv_heads, dim, generator=g)
    order = torch.randperm(num_blocks, generator=g).tolist()  # blocks scattered over the cache
    width = max(-(-n // BLOCK) for n in lengths)
    tables = torch.zeros(len(lengths), width, dtype=torch.int32)
    for i, n in enumerate(lengths):
        for j in range(-(-n // BLOCK)):
            tables[i, j] = order.pop()
    q = torch.randn(len(lengths), heads, dim, generator=g)
    return q, keys, values, tables, torch.tensor(lengths, dtype=torch.int32)


@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(4, 4, 32), (9, 3, 64), (8, 2, 16)])
def test_block_table_reference_matches_slot_gathering(heads: int, kv_heads: int, dim: int) -> None:
    lengths = [1, 16, 17, 70]
    q, keys, values, tables, lens = random_cache(heads, kv_heads, dim, lengths)
    expected = paged_decode_reference(q, keys, values, tables, lens, BLOCK, 0.25)
    max_len = max(lengths)
    slots = torch.zeros(len(lengths), max_len, dtype=torch.long)
    for i, n in enumerate(lengths):
        blocks = tables[i, : -(-n // BLOCK)].long()
        slots[i, :n] = (blocks[:, None] * BLOCK + torch.arange(BLOCK)).view(-1)[:n]
    mask = (torch.arange(max_len)[None, :] < lens[:, None])[:, None, None, :]
    gathered = _decode(q, KVCache(keys, values), slots, mask, 0.25)
    torch.testing.assert_close(gathered, expected, atol=1e-5, rtol=0)


INTERPRETED_CHECK = """
import sys, torch
from tests.model_runtime.test_block_table_decode import BLOCK, random_cache
from model_runtime.kernels.paged_decode import paged_decode, paged_decode_reference
heads, kv_heads, dim = map(int, sys.argv[1:])
lengths = [1, 63, 64, 65, 130]  # around the kernel's 64-token tile
q, keys, values, tables, lens = random_cache(heads, kv_heads, dim, lengths, seed=1)
out = paged_decode(q, keys, values, tables, lens, BLOCK, dim**-0.5)
expected = paged_decode_reference(q, keys, values, tables, lens, BLOCK, dim**-0.5)
print((out - expected).abs().max().item())
"""


@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(4, 4, 32), (9, 3, 64), (8, 2, 16)])
def test_triton_kernel_matches_reference(heads: int, kv_heads: int, dim: int) -> None:
    """The GPU kernel's own code, run by Triton's interpreter on the CPU.

    In a fresh interpreter: torch imports triton, and triton reads TRITON_INTERPRET when imported.
    """
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    args = [sys.executable, "-c", INTERPRETED_CHECK, str(heads), str(kv_heads), str(dim)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert float(done.stdout.strip().splitlines()[-1]) < 1e-5


def test_bucket_sizes_cover_every_batch() -> None:
    assert bucket_sizes(1) == [1]
    assert bucket_sizes(12) == [1, 2, 4, 8, 12]
    assert bucket_sizes(64) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]
    sizes = bucket_sizes(20)
    assert all(any(s >= n for s in sizes) for n in range(1, 21))


def tiny_native_and_reference() -> tuple[LlamaModel, LlamaForCausalLM]:
    """A 2-layer GQA Llama (vocabulary 97) on the CPU in fp32, natively and in transformers."""
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    reference = LlamaForCausalLM(config).eval()
    model = build_model(config, torch.device("cpu"), torch.float32)
    model.load_hf_weights(reference.state_dict().items())
    prepare_for_inference(model)
    return model, reference


def test_static_decode_buffers_give_the_runners_logits_and_touch_only_the_scratch_block() -> None:
    model, _ = tiny_native_and_reference()
    runner = ModelRunner(model, num_blocks=24, block_size=4)
    graphs = DecodeGraphs(
        model, runner.caches, 4, max_batch=8, max_blocks_per_seq=16, scratch_block=24, capture=False
    )
    blocks = BlockManager(24, 4)
    seqs = []
    for n in (5, 12, 9):  # three sequences: the bucket of 4 pads one row
        seq = Sequence(f"r{n}", torch.randint(0, 97, (n,)).tolist(), n, SamplingParams(), max_total_tokens=64)
        blocks.allocate(seq, n)
        runner.run(Batch(prefills=[ScheduledChunk(seq, 0, n)]))
        seq.token_ids.append(int(torch.randint(0, 97, ())))
        blocks.allocate(seq, seq.num_tokens)
        seqs.append(seq)
    decodes = [ScheduledChunk(s, s.num_tokens - 1, 1) for s in seqs]
    expected, _ = runner.run(Batch(decodes=decodes))
    before = [c.keys.clone() for c in runner.caches]
    logits = graphs.run(
        [s.token_ids[-1] for s in seqs], [s.num_tokens - 1 for s in seqs], [s.block_table for s in seqs]
    )
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    decode_slots = [s.block_table[(s.num_tokens - 1) // 4] * 4 + (s.num_tokens - 1) % 4 for s in seqs]
    scratch_slot = 24 * 4
    for cache, old in zip(runner.caches, before, strict=True):
        changed = set((cache.keys != old).any(dim=(1, 2)).nonzero().flatten().tolist())
        # The sequences' new K/V were written again (equal up to rounding); the padded row wrote
        # the scratch block; nothing else moved.
        assert changed <= {*decode_slots, scratch_slot}
        assert scratch_slot in changed
        torch.testing.assert_close(cache.keys[decode_slots], old[decode_slots], atol=1e-5, rtol=0)


def test_static_buffers_follow_tables_that_grow_change_and_shrink_between_steps() -> None:
    """Host table rows are rewritten only where they changed: each step's logits must still equal
    the runner's, as sequences gain blocks, swap rows, give a row to a new sequence, and leave."""
    model, _ = tiny_native_and_reference()
    runner = ModelRunner(model, num_blocks=40, block_size=4)
    graphs = DecodeGraphs(
        model, runner.caches, 4, max_batch=8, max_blocks_per_seq=16, scratch_block=40, capture=False
    )
    blocks = BlockManager(40, 4)

    def admitted(n: int) -> Sequence:
        seq = Sequence(f"r{n}", torch.randint(0, 97, (n,)).tolist(), n, SamplingParams(), max_total_tokens=64)
        blocks.allocate(seq, n)
        runner.run(Batch(prefills=[ScheduledChunk(seq, 0, n)]))
        return seq

    def step(seqs: list[Sequence]) -> None:
        for s in seqs:
            s.token_ids.append(int(torch.randint(0, 97, ())))
            blocks.allocate(s, s.num_tokens)
        decodes = [ScheduledChunk(s, s.num_tokens - 1, 1) for s in seqs]
        expected, _ = runner.run(Batch(decodes=decodes))
        logits = graphs.run(
            [s.token_ids[-1] for s in seqs], [s.num_tokens - 1 for s in seqs], [s.block_table for s in seqs]
        )
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)

    a, b, c = admitted(3), admitted(7), admitted(4)
    step([a, b, c])
    step([a, b, c])  # a and c start a new block
    step([c, a, b])  # rows swap sequences
    blocks.free(b)
    d = admitted(9)  # takes b's freed blocks: a row whose table changes inside, not at its end
    step([c, a, d])
    step([d])  # the batch shrinks: the padded bucket's rows are not the sequences' rows any more
    step([a, d, c])  # and grows again over rows that were padding
    step([a, d, c])  # both host twins have a's table in row 0
    blocks.free(a)  # as a preemption does: a is computed again, into other blocks
    blocks.allocate(a, a.num_tokens)
    runner.run(Batch(prefills=[ScheduledChunk(a, 0, a.num_tokens)]))
    step([a, d, c])  # a's row in each twin: a table as long as the one it held, of other blocks
    step([a, d, c])
