"""Shared fixtures: the real default model, and tiny random models that use its tokenizer."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    from model_runtime.models.fetch import resolve_model

    return resolve_model("smollm2-135m-instruct", progress=False).path


@pytest.fixture(scope="session")
def tiny_model_path(default_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama with GQA and the default model's tokenizer and chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    for f in default_model_path.iterdir():
        if f.suffix != ".safetensors" and f.name != "config.json" and f.is_file():
            shutil.copy(f, folder / f.name)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config)
    # Spread the logits so greedy choices are not near-ties that fp noise could flip.
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(20)
    model.save_pretrained(folder)
    return folder
