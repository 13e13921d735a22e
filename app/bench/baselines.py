"""transformers' `generate_batch()` (its continuous batching) as a baseline for the engine bench."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from app.bench.engine import RunTiming


def load_reference(path: Path, device: torch.device, dtype: torch.dtype) -> Any:
    """transformers' own model class for `path`; random-weight folders get random weights."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from model_runtime.models.random_models import has_random_weights

    transformers.logging.set_verbosity_error()  # generation-flag warnings would drown the table
    if has_random_weights(path):
        # Same shapes, its own random weights: the speed comparison is what counts here.
        config = transformers.AutoConfig.from_pretrained(path)
        with torch.device(device):
            return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()


def bench_generate_batch(
    model: Any, prompts: Sequence[Sequence[int]], output_lens: Sequence[int], temperature: float
) -> RunTiming:
    """Every request submitted at once to transformers' continuous-batching manager, each with its
    own output length, EOS disabled; timed from the first submission to the last result."""
    from transformers import GenerationConfig

    from app.bench.engine import RunTiming

    config = GenerationConfig(
        max_new_tokens=max(output_lens),
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None,
        eos_token_id=None,  # as ignore_eos: every request generates exactly its length
        pad_token_id=0,
    )

    def run(batch: Sequence[Sequence[int]], lens: Sequence[int]) -> tuple[int, float]:
        """(tokens generated, seconds)."""
        # Not under inference_mode: the manager's thread updates tensors made here in place, which
        # transformers 5.17 refuses for inference tensors.
        with model.continuous_batching_context_manager(
            generation_config=config, block=True, timeout=30
        ) as manager:
            started = time.perf_counter()
            ids = [manager.add_request(list(p), max_new_tokens=n) for p, n in zip(batch, lens, strict=True)]
            done: dict[str, Any] = {}
            while len(done) < len(ids):
                result = manager.get_result(timeout=1)
                if result is None:
                    if not manager.is_running():
                        raise RuntimeError("generate_batch's manager stopped before finishing")
                    continue
                if result.is_finished():
                    done[result.request_id] = result
            seconds = time.perf_counter() - started
        tokens = sum(len(r.generated_tokens) for r in done.values())
        return tokens, seconds

    print("generate_batch: warming up", file=sys.stderr)
    run(prompts[:2], [2] * min(2, len(prompts)))
    print(f"generate_batch: {len(prompts)} requests", file=sys.stderr)
    tokens, seconds = run(prompts, output_lens)
    return RunTiming(tokens, seconds, 0, 0.0)
