"""The GPU's fused layer kernels (`kernels/fused_layer.py`), run by Triton's interpreter on the CPU.

Each check runs in a fresh interpreter: torch imports triton, and triton reads TRITON_INTERPRET
when it is imported. The interpreter rounds fp32 to bf16 by truncation where a GPU rounds to
nearest, so bf16 is allowed one unit in the last place here; fp32 and fp16 must match exactly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model_runtime.kernels.fused_layer import fused_kernels_enabled

ROOT = Path(__file__).resolve().parents[2]


def interpreted(script: str, *args: str) -> list[str]:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split()


KERNELS_AGAINST_REFERENCES = """
import sys, torch
from model_runtime.kernels.fused_layer import *
dtype = getattr(torch, sys.argv[1])
g = torch.Generator().manual_seed(0)
def rand(*shape):
    return torch.randn(*shape, generator=g).to(dtype)
# One unit in the last place (fp32: a few, for sums taken in another order).
ulp = {torch.float32: 4e-7, torch.float16: 2**-10, torch.bfloat16: 2**-7}[dtype]
def diff(a, b):  # the largest difference, in units of the reference's last place
    a, b = a.float(), b.float()
    return ((a - b).abs() / (ulp * b.abs().clamp(min=1))).max().item()
errors = {}
for n, add in ((96, True), (576, True), (300, False)):  # a SmolLM2 row; a row not a power of two
    x, update, w = rand(5, n), rand(5, n) if add else None, rand(n)
    x_ref = x.clone()
    out, expected = rms_norm(x, w, 1e-5, update), rms_norm_reference(x_ref, w, 1e-5, update)
    errors[f"norm{n}"] = diff(out, expected)
    errors[f"residual{n}"] = diff(x, x_ref)  # the sum left in the residual stream
heads, kv_heads, dim, t = 9, 3, 64, 4  # SmolLM2's grouping
qkv = rand(t, (heads + 2 * kv_heads) * dim)
positions = torch.tensor([0, 1, 37, 1000])
inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
freqs = positions.float()[:, None] * inv_freq[None, :]
emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
caches = [torch.full((40, kv_heads, dim), 7.0, dtype=dtype) for _ in range(4)]
slots = torch.tensor([3, 17, 30, 39])
qkv_ref = qkv.clone()
rope_and_cache(qkv, cos, sin, caches[0], caches[1], slots, heads, kv_heads)
rope_and_cache_reference(qkv_ref, cos, sin, caches[2], caches[3], slots, heads, kv_heads)
errors["rope"] = diff(qkv, qkv_ref)
errors["keys"] = diff(caches[0], caches[2])
errors["values"] = diff(caches[1], caches[3])
gate_up = rand(3, 2 * 1536)  # wider than one program's block
errors["silu_mul"] = diff(silu_mul(gate_up), silu_mul_reference(gate_up))
print(*(f"{k}={v}" for k, v in errors.items()))
"""


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_each_kernel_matches_its_torch_reference(dtype: str) -> None:
    pairs = (pair.split("=") for pair in interpreted(KERNELS_AGAINST_REFERENCES, dtype))
    errors = {name: float(value) for name, value in pairs}
    # Sums taken in another order, or exp and rsqrt an ulp away from torch's, can move a rounding
    # by one unit; bf16 by up to three, as the interpreter truncates at each rounding.
    allowed = 3.0 if dtype == "bfloat16" else 1.0
    assert all(error <= allowed for error in errors.values()), errors
    if dtype != "bfloat16":  # rotations, residual sums and cache writes round exactly as torch does
        moved = ["rope", "keys", "values", "residual96", "residual576", "residual300"]
        assert all(errors[name] == 0.0 for name in moved), errors


FUSED_MODEL_AGAINST_PLAIN = """
import torch
import model_runtime.models.llama as llama
from tests.model_runtime.test_block_table_decode import tiny_native_and_reference
from model_runtime.api import SamplingParams
from model_runtime.kv_cache import BlockManager
from model_runtime.model_runner import ModelRunner
from model_runtime.scheduler import Batch, ScheduledChunk
from model_runtime.sequence import Sequence

def run(fused):
    llama.fused_kernels_enabled = lambda x: fused
    model, _ = tiny_native_and_reference()
    runner = ModelRunner(model, num_blocks=24, block_size=4)
    blocks = BlockManager(24, 4)
    g = torch.Generator().manual_seed(1)
    seqs = [Sequence(f"r{n}", torch.randint(0, 97, (n,), generator=g).tolist(), n, SamplingParams(), 64)
            for n in (5, 12)]
    logits = []
    for seq in seqs:  # a prefill each, then three steps of both decoding, greedily
        blocks.allocate(seq, seq.num_tokens)
        out, _ = runner.run(Batch(prefills=[ScheduledChunk(seq, 0, seq.num_tokens)]))
        logits.append(out)
        seq.token_ids.append(int(out[0].argmax()))
    for _ in range(3):
        for seq in seqs:
            blocks.allocate(seq, seq.num_tokens)
        out, _ = runner.run(Batch(decodes=[ScheduledChunk(s, s.num_tokens - 1, 1) for s in seqs]))
        logits.append(out)
        for seq, token in zip(seqs, out.argmax(dim=-1).tolist()):
            seq.token_ids.append(token)
    return torch.cat(logits), [s.token_ids for s in seqs], runner.caches

fused, fused_tokens, fused_caches = run(True)
plain, plain_tokens, plain_caches = run(False)
cache_error = max((a.keys - b.keys).abs().max().item() for a, b in zip(fused_caches, plain_caches))
print((fused - plain).abs().max().item(), cache_error, fused_tokens == plain_tokens)
"""


def test_the_model_with_fused_kernels_gives_the_plain_models_logits_and_cache() -> None:
    """Prefill and decode steps through the runner: the fused layer (norms adding the residual,
    RoPE writing the cache, SwiGLU) against the plain torch layer, fp32 on the CPU."""
    logits_error, cache_error, same_tokens = interpreted(FUSED_MODEL_AGAINST_PLAIN)
    assert float(logits_error) < 1e-4
    assert float(cache_error) < 1e-5
    assert same_tokens == "True"


def test_the_kernels_stay_off_the_cpu_and_off_when_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not fused_kernels_enabled(torch.zeros(2))
    monkeypatch.setenv("ATENEA_FUSED_KERNELS", "0")
    assert not fused_kernels_enabled(torch.zeros(2))


SELF_CHECK = """
import torch
from model_runtime.kernels import fused_layer
print(fused_layer.verify(torch.device("cpu")))
fused_layer.silu_mul = lambda gate_up: fused_layer.silu_mul_reference(gate_up) + 1  # a wrong kernel
print(fused_layer.verify(torch.device("cpu")))
def broken(*args, **kwargs):
    raise RuntimeError("does not compile")
fused_layer.rms_norm = broken
print(fused_layer.verify(torch.device("cpu")))
"""


def test_the_first_use_check_turns_a_wrong_or_failing_kernel_off() -> None:
    assert interpreted(SELF_CHECK) == ["True", "False", "False"]

