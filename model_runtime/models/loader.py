"""Builds a native model from a Hugging Face style folder (config.json + safetensors)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from model_runtime.models.cpu_linear import onednn_available, use_cpu_linears
from model_runtime.models.llama import LlamaModel, LlamaShape, rope_inv_freq
from model_runtime.models.random_models import has_random_weights

log = logging.getLogger(__name__)

# Architectures the native Llama definition covers exactly.
LLAMA_FAMILY = {"llama", "mistral", "qwen2", "smollm", "smollm2"}


def load_hf_config(folder: Path) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder, local_files_only=True)


def iter_safetensors(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        # Pickle checkpoints (*.bin, *.pt) can run code when loaded: refuse them.
        raise FileNotFoundError(f"no *.safetensors weights in {folder}")
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                yield name, f.get_tensor(name)


def build_model(config: Any, device: torch.device, dtype: torch.dtype) -> LlamaModel:
    model_type = getattr(config, "model_type", "llama")
    if model_type not in LLAMA_FAMILY:
        raise ValueError(f"model type {model_type!r} is not supported (supported: {sorted(LLAMA_FAMILY)})")
    if getattr(config, "sliding_window", None) and model_type == "mistral":
        log.warning("sliding-window attention is served as full attention")
    shape = LlamaShape.from_hf_config(config)
    inv_freq, scaling = rope_inv_freq(config)
    # Built on the meta device so no time is spent initialising weights that get overwritten.
    with torch.device("meta"):
        model = LlamaModel(shape, inv_freq.to("meta"), scaling)
    model = model.to_empty(device=device).to(dtype)
    model.tie_weights()
    model.inv_freq = inv_freq.to(device)
    return model.eval()


def prepare_for_inference(model: LlamaModel, half_weights: bool = False) -> None:
    """Device-specific weight layouts, once the weights are in place.

    `half_weights` (CPU only): keep linear weights at fp16 precision, computing in fp32.
    """
    if next(model.parameters()).device.type == "cpu" and onednn_available():
        use_cpu_linears(model, half_weights)


def fill_random(model: LlamaModel, seed: int = 0) -> None:
    """Weights for a random-weight model, drawn on its device: small normals, unit norms."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)


def load_model(
    folder: Path, device: torch.device, dtype: torch.dtype, half_weights: bool = False
) -> tuple[LlamaModel, Any]:
    config = load_hf_config(folder)
    model = build_model(config, device, dtype)
    if has_random_weights(folder):
        log.warning("%s has random weights: for measuring speed, not for answers", folder.name)
        fill_random(model)
    else:
        model.load_hf_weights(iter_safetensors(folder))
    prepare_for_inference(model, half_weights)
    return model, config
