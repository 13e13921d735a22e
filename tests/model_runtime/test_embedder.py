"""Embeddings from the native model match transformers' mean-pooled last hidden state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from model_runtime.api import ContextLengthExceeded, InvalidPrompt
from tests.model_runtime.test_engine import make_engine, prompts


def test_embeddings_match_transformers(tiny_model_path: Path) -> None:
    engine = make_engine(tiny_model_path, dtype="float32")
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    inputs = prompts(3, seed=7)
    vectors = engine.embed(inputs)
    for ids, vector in zip(inputs, vectors, strict=True):
        with torch.no_grad():
            hidden = reference.model(torch.tensor([ids])).last_hidden_state[0]
        expected = F.normalize(hidden.mean(dim=0), dim=0)
        torch.testing.assert_close(torch.tensor(vector), expected, atol=1e-4, rtol=1e-4)
    # Embedding takes no KV blocks from generation.
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_embedding_inputs_are_checked(tiny_model_path: Path) -> None:
    engine = make_engine(tiny_model_path, max_model_len=32)
    with pytest.raises(InvalidPrompt):
        engine.embed([[]])
    with pytest.raises(InvalidPrompt):
        engine.embed([[49152]])
    with pytest.raises(ContextLengthExceeded):
        engine.embed([[5] * 33])
