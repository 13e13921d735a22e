"""The native Llama-family model against transformers' reference, fp32, tiny random configs."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from model_runtime.api import SamplingParams
from model_runtime.kv_cache import BlockManager
from model_runtime.model_runner import ModelRunner
from model_runtime.models.loader import build_model, prepare_for_inference
from model_runtime.scheduler import Batch, ScheduledChunk
from model_runtime.sequence import Sequence

TOL = 1e-4


def tiny_config(kind: str, **overrides: object) -> LlamaConfig | Qwen2Config:
    common = dict(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
    )
    common.update(overrides)
    if kind == "qwen2":
        return Qwen2Config(**common)
    return LlamaConfig(**common)


def reference_and_native(config: LlamaConfig | Qwen2Config) -> tuple[torch.nn.Module, ModelRunner]:
    torch.manual_seed(0)
    cls = Qwen2ForCausalLM if config.model_type == "qwen2" else LlamaForCausalLM
    reference = cls(config).eval()
    # Random biases so that a missed bias shows up in the logits.
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if name.endswith("bias"):
                p.normal_()
    native = build_model(config, torch.device("cpu"), torch.float32)
    native.load_hf_weights(reference.state_dict().items())
    prepare_for_inference(native)  # the CPU's packed fp32 weights
    return reference, ModelRunner(native, num_blocks=32, block_size=4)


@pytest.mark.parametrize("length", [5, 23])  # few rows: FBGEMM's fp16 GEMM; many: oneDNN
def test_fp16_weights_stay_close_to_the_reference(length: int) -> None:
    """The CPU's default layout rounds weights to fp16: logits move by far less than their spread."""
    config = tiny_config("llama")
    torch.manual_seed(0)
    reference = LlamaForCausalLM(config).eval()
    native = build_model(config, torch.device("cpu"), torch.float32)
    native.load_hf_weights(reference.state_dict().items())
    prepare_for_inference(native, half_weights=True)
    runner = ModelRunner(native, num_blocks=32, block_size=4)
    tokens = torch.randint(0, 97, (length,)).tolist()
    with torch.no_grad():
        expected = reference(torch.tensor([tokens])).logits[0, -1]
    seq = make_seq(tokens, BlockManager(runner.num_blocks, runner.block_size))
    logits, _ = runner.run(Batch(prefills=[ScheduledChunk(seq, 0, length)]))
    assert expected.std() > 0.1
    torch.testing.assert_close(logits[0], expected, atol=2e-3, rtol=0)


def make_seq(tokens: list[int], blocks: BlockManager) -> Sequence:
    seq = Sequence("r", list(tokens), len(tokens), SamplingParams(), max_total_tokens=10_000)
    blocks.allocate(seq, len(tokens))
    return seq


CONFIGS = {
    "llama-gqa-tied": ("llama", {"tie_word_embeddings": True}),
    "llama-untied": ("llama", {"tie_word_embeddings": False}),
    "llama-bias": ("llama", {"attention_bias": True, "mlp_bias": True}),
    "qwen2-bias": ("qwen2", {"tie_word_embeddings": False}),
    "llama3-rope": (
        "llama",
        {
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            }
        },
    ),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_prefill_logits_match_transformers(name: str) -> None:
    kind, overrides = CONFIGS[name]
    reference, runner = reference_and_native(tiny_config(kind, **overrides))
    tokens = torch.randint(0, 97, (23,)).tolist()
    with torch.no_grad():
        expected = reference(torch.tensor([tokens])).logits[0, -1]
    blocks = BlockManager(runner.num_blocks, runner.block_size)
    seq = make_seq(tokens, blocks)
    logits, _ = runner.run(Batch(prefills=[ScheduledChunk(seq, 0, len(tokens))]))
    torch.testing.assert_close(logits[0], expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["llama-gqa-tied", "qwen2-bias"])
def test_chunked_prefill_and_batched_decode_match_transformers(name: str) -> None:
    """Chunks, decodes of several sequences of different lengths in one step: same logits."""
    kind, overrides = CONFIGS[name]
    reference, runner = reference_and_native(tiny_config(kind, **overrides))
    blocks = BlockManager(runner.num_blocks, runner.block_size)
    prompts = [torch.randint(0, 97, (n,)).tolist() for n in (11, 6, 17)]
    seqs = [make_seq(p, blocks) for p in prompts]
    # Prefill the first sequence in two chunks (7 + 4), the others in one.
    runner.run(Batch(prefills=[ScheduledChunk(seqs[0], 0, 7), ScheduledChunk(seqs[1], 0, 6)]))
    runner.run(Batch(prefills=[ScheduledChunk(seqs[0], 7, 4), ScheduledChunk(seqs[2], 0, 17)]))
    for step in range(3):
        for seq in seqs:
            seq.token_ids.append((step * 7 + len(seq.token_ids)) % 97)
            blocks.allocate(seq, seq.num_tokens)
        batch = Batch(decodes=[ScheduledChunk(s, s.num_tokens - 1, 1) for s in seqs])
        logits, _ = runner.run(batch)
        for i, seq in enumerate(seqs):
            with torch.no_grad():
                expected = reference(torch.tensor([seq.token_ids])).logits[0, -1]
            torch.testing.assert_close(logits[i], expected, atol=TOL, rtol=0)
