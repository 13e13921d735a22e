"""Decode-only steps through the C++ decoder (`cpu_decoder.py`) against the op-by-op path: the same
logits and the same KV cache, bit for bit, over an fp32 or an fp16 cache, and a sequence's logits
independent of its batch."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, Qwen2Config

from model_runtime.api import SamplingParams
from model_runtime.kernels import cpu_extension
from model_runtime.kv_cache import BlockManager
from model_runtime.model_runner import ModelRunner
from model_runtime.models.loader import build_model, fill_random, prepare_for_inference
from model_runtime.scheduler import Batch, ScheduledChunk
from model_runtime.sequence import Sequence

pytestmark = pytest.mark.skipif(
    not cpu_extension.cpu_supports_kernels(), reason="the kernels are for x86-64 CPUs with AVX2"
)

BLOCK = 4
VOCAB = 96  # a multiple of 16: the output layer is packed too, so its rows are batch-independent
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
CONFIGS = {
    "llama-gqa": LlamaConfig(**COMMON),
    "llama-biases": LlamaConfig(**COMMON, attention_bias=True, mlp_bias=True),
    "qwen2-qkv-bias": Qwen2Config(**COMMON),
}


def runner_with_prompts(
    config: LlamaConfig | Qwen2Config, lengths: list[int], kv_dtype: torch.dtype = torch.float16
) -> tuple[ModelRunner, list[Sequence]]:
    """A runner over a random model with fp16-precision weights (the kernels' packed F16 form),
    and one prefilled sequence per prompt length, each with its next token appended."""
    model = build_model(config, torch.device("cpu"), torch.float32)
    fill_random(model, seed=0)
    with torch.no_grad():  # biases are zero after fill_random: make them count
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.5)
    prepare_for_inference(model, half_weights=True)
    runner = ModelRunner(model, num_blocks=64, block_size=BLOCK, kv_dtype=kv_dtype)
    blocks = BlockManager(64, BLOCK)
    generator = torch.Generator().manual_seed(1)
    seqs = []
    for i, n in enumerate(lengths):
        prompt = torch.randint(0, VOCAB, (n,), generator=generator).tolist()
        seq = Sequence(f"r{i}", prompt, n, SamplingParams(), max_total_tokens=128)
        blocks.allocate(seq, n)
        runner.run(Batch(prefills=[ScheduledChunk(seq, 0, n)]))
        seq.token_ids.append(int(torch.randint(0, VOCAB, (), generator=generator)))
        blocks.allocate(seq, seq.num_tokens)
        seqs.append(seq)
    return runner, seqs


def decode_step(runner: ModelRunner, seqs: list[Sequence]) -> torch.Tensor:
    logits, _ = runner.run(Batch(decodes=[ScheduledChunk(s, s.num_tokens - 1, 1) for s in seqs]))
    return logits


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("kind", CONFIGS)
def test_a_decode_step_equals_the_op_by_op_path_bit_for_bit(kind: str, kv_dtype: torch.dtype) -> None:
    runner, seqs = runner_with_prompts(CONFIGS[kind], [5, 12, 9, 1, 30], kv_dtype)
    assert runner.caches[0].keys.dtype == kv_dtype
    assert runner.cpu_decoder is not None
    before = [(c.keys.clone(), c.values.clone()) for c in runner.caches]
    fused = decode_step(runner, seqs)
    fused_cache = [(c.keys.clone(), c.values.clone()) for c in runner.caches]
    for cache, (keys, values) in zip(runner.caches, before, strict=True):
        cache.keys.copy_(keys)
        cache.values.copy_(values)
    runner.cpu_decoder = None
    op_by_op = decode_step(runner, seqs)
    assert fused.shape == (len(seqs), VOCAB)
    assert torch.equal(fused, op_by_op)
    for cache, (keys, values) in zip(runner.caches, fused_cache, strict=True):
        assert torch.equal(cache.keys, keys) and torch.equal(cache.values, values)
    # The step wrote each sequence's new key into its slot, and nothing else.
    for cache, (keys, _) in zip(runner.caches, before, strict=True):
        changed = (cache.keys != keys).any(dim=(1, 2)).nonzero().flatten().tolist()
        slots = [
            s.block_table[(s.num_tokens - 1) // BLOCK] * BLOCK + (s.num_tokens - 1) % BLOCK for s in seqs
        ]
        assert sorted(changed) == sorted(slots)


def test_a_sequence_gets_the_same_logits_alone_and_in_a_batch() -> None:
    runner, seqs = runner_with_prompts(CONFIGS["llama-gqa"], [3, 17, 8, 40, 2, 11, 25, 6])
    assert runner.cpu_decoder is not None
    batched = decode_step(runner, seqs)
    for i, seq in enumerate(seqs):
        assert torch.equal(decode_step(runner, [seq]), batched[i : i + 1])


def test_projections_outside_the_packed_forms_keep_the_op_by_op_path() -> None:
    model = build_model(CONFIGS["llama-gqa"], torch.device("cpu"), torch.float32)
    fill_random(model, seed=0)
    prepare_for_inference(model, half_weights=False)  # random fp32 weights: no block grid, no fp16
    runner = ModelRunner(model, num_blocks=16, block_size=BLOCK)
    assert runner.cpu_decoder is None
