"""Random-weight models of real shapes, for measuring speed where no weights can be downloaded.

`random:llama2-7b` is a folder with Llama-2-7B's config.json and the default model's tokenizer and
chat template, and no weights: the loader fills the parameters with random values on the device.
The text is gibberish; the arithmetic per token is the real model's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

PREFIX = "random:"
MARKER = "random-weights.json"

# Shapes of the published configs.
SHAPES: dict[str, dict[str, Any]] = {
    "llama2-7b": dict(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
    ),
    "llama3-8b": dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
    ),
    "smollm2-135m": dict(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
    ),
}  # fmt: skip


def is_random_spec(spec: str) -> bool:
    return spec.startswith(PREFIX)


def has_random_weights(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def shape_name(spec: str) -> str:
    name = spec.removeprefix(PREFIX)
    if name not in SHAPES:
        raise ValueError(f"unknown random model {spec!r}: known are {', '.join(PREFIX + n for n in SHAPES)}")
    return name


def folder_for(spec: str, home: Path) -> Path:
    """Where `random:NAME` lives under `home`, written or not; an unknown shape raises ValueError."""
    return home / "models" / f"random-{shape_name(spec)}"


def materialize(spec: str, home: Path, tokenizer_folder: Path) -> Path:
    """The folder for `random:NAME` (config, tokenizer, marker), written once into `home`."""
    name = shape_name(spec)
    folder = folder_for(spec, home)
    if has_random_weights(folder):
        return folder
    from transformers import LlamaConfig

    partial = home / "models" / f".partial-random-{name}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    shape = dict(SHAPES[name])
    theta = shape.pop("rope_theta")
    config = LlamaConfig(
        **shape,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
        bos_token_id=1,
        eos_token_id=2,
    )
    config.save_pretrained(partial)
    for f in tokenizer_folder.iterdir():
        if f.is_file() and f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(f, partial / f.name)
    (partial / MARKER).write_text(json.dumps({"shape": name}))
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder
