"""Random-weight models of real shapes: what GPU benchmarks run on where no weights can be fetched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_runtime.api import SamplingParams
from model_runtime.config import EngineConfig
from model_runtime.engine import Engine
from model_runtime.models.fetch import resolve_model
from model_runtime.models.loader import load_hf_config


def test_random_shapes_have_the_published_configs(default_model_path: Path) -> None:
    llama2 = load_hf_config(resolve_model("random:llama2-7b", progress=False).path)
    assert (llama2.hidden_size, llama2.num_hidden_layers, llama2.num_key_value_heads) == (4096, 32, 32)
    llama3 = load_hf_config(resolve_model("random:llama3-8b", progress=False).path)
    assert (llama3.vocab_size, llama3.intermediate_size, llama3.num_key_value_heads) == (128256, 14336, 8)
    assert not list(resolve_model("random:llama3-8b", progress=False).path.glob("*.safetensors"))


def test_a_random_model_serves_tokens(default_model_path: Path) -> None:
    resolved = resolve_model("random:smollm2-135m", progress=False)
    assert json.loads((resolved.path / "random-weights.json").read_text())["shape"] == "smollm2-135m"
    engine = Engine(
        EngineConfig(model_path=resolved.path, served_model_name=resolved.served_name, device="cpu")
    )
    engine.add_request(
        "r", engine.tokenizer.encode("Hello there"), SamplingParams(max_tokens=5, ignore_eos=True)
    )
    outs = []
    while engine.has_work():
        outs.extend(engine.step())
    assert outs[-1].finished and outs[-1].completion_tokens == 5


def test_unknown_random_shape() -> None:
    with pytest.raises(ValueError, match="random:llama2-7b"):
        resolve_model("random:gpt-5", progress=False)


def test_text_for_a_random_shape_stays_in_its_vocabulary(default_model_path: Path) -> None:
    """random:llama2-7b borrows a 49,152-token tokenizer for a 32,000-token shape: chat requests
    (the HTTP benchmark's) must tokenize into the shape's vocabulary, not fail the prompt check."""
    from model_runtime.tokenizer import Tokenizer

    text = "Request 7. Write a long story about a lighthouse keeper, in Portuguese: pão, coração, ninguém."
    full = Tokenizer.from_folder(default_model_path).encode(text)
    llama2 = Tokenizer.from_folder(resolve_model("random:llama2-7b", progress=False).path)
    assert max(full) >= 32000  # the text does reach past Llama 2's vocabulary
    assert llama2.encode(text) == [i % 32000 for i in full]
    smollm2 = Tokenizer.from_folder(resolve_model("random:smollm2-135m", progress=False).path)
    assert smollm2.encode(text) == full  # its own vocabulary: nothing folded
