"""Frozen runtime configuration. Derived facts (dtype, device, KV blocks) are returned, never written back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class EngineConfig:
    model_path: Path  # a Hugging Face style folder: config.json, *.safetensors, tokenizer files
    served_model_name: str
    device: Device = "auto"
    dtype: DType = "auto"
    max_num_seqs: int = 64  # sequences running at once
    max_model_len: int | None = None  # None: the model's own context window
    # Tokens per step; bounds a prefill chunk. None: 512 on a CPU (a step stays short next to the
    # decodes it delays), 8192 on a GPU (prompts of many requests fill one step's matmuls).
    max_num_batched_tokens: int | None = None
    block_size: int = 16  # tokens per KV block
    kv_cache_memory_gib: float | None = None  # CPU: KV budget; None picks a default
    gpu_memory_utilization: float = 0.9
    # GPU: device memory another component on the same GPU (the image pipeline) needs at its peak,
    # kept out of the KV budget on top of what is already allocated when the engine measures.
    reserved_gpu_memory_bytes: int = 0
    num_threads: int | None = None  # CPU threads for torch; None: all cores
    enable_prefix_caching: bool = True  # reuse the KV blocks of prompts' known prefixes
    enforce_eager: bool = False  # GPU: run decode steps eagerly instead of replaying CUDA graphs
    # Launch each step before the host reads the previous one's tokens (see in_flight.py). None:
    # where the device runs asynchronously (CUDA); a CPU computes while the host waits, so there
    # it would only deliver every token one step later.
    overlap_steps: bool | None = None
