"""Every Triton kernel of the GPU path, compiled by Triton's real compiler for an H100.

The interpreter tests run the kernels' Python on the CPU, but accept code that only a GPU build
rejects (a value whose type differs between the branches of an `if`, say). This compiles each
kernel as the engine launches it down to an sm_90 binary (ptxas ships with Triton): no device
needed, so a kernel that would not build on the GPU fails here first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

COMPILE_FOR_HOPPER = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from model_runtime.kernels import fused_layer, paged_decode, paged_prefill

dtype, precision = sys.argv[1], "ieee" if sys.argv[1] == "fp32" else "tf32"
index_pointers = ("slots_ptr", "tables_ptr", "lens_ptr", "q_starts_ptr", "q_lens_ptr", "ctx_starts_ptr")
kinds = {"slots_ptr": "*i64", "eps": "fp32", "scale": "fp32"} | {p: "*i32" for p in index_pointers[1:]}
fused = fused_layer._kernels()
launches = [  # (name, kernel, its compile-time constants, warps), as the engine launches them
    ("rms_norm", fused["rms_norm"], {"HAS_ADD": True, "BLOCK": 1024}, 4),  # SmolLM2's rows
    ("rms_norm", fused["rms_norm"], {"HAS_ADD": False, "BLOCK": 4096}, 8),  # Llama-2-7B's
    ("rope_and_cache", fused["rope_and_cache"], {"NUM_HEADS": 9, "NUM_KV_HEADS": 3, "HEAD_DIM": 64}, 1),
    ("rope_and_cache", fused["rope_and_cache"], {"NUM_HEADS": 32, "NUM_KV_HEADS": 8, "HEAD_DIM": 128}, 2),
    ("silu_mul", fused["silu_mul"], {"BLOCK": 1024}, 4),
    ("paged_decode", paged_decode._kernel(), {"GROUP": 3, "GROUP_ROWS": 16, "HEAD_DIM": 64, "BLOCK_SIZE": 16,
     "TILE": paged_decode.TILE_TOKENS, "PRECISION": precision}, 4),
    ("paged_prefill", paged_prefill._kernel(), {"GROUP": 4, "HEAD_DIM": 128, "BLOCK_SIZE": 16,
     "TILE_M": paged_prefill.TILE_M, "TILE_N": paged_prefill.TILE_N, "PRECISION": precision}, 4),
]
for name, kernel, constants, warps in launches:
    signature, constexprs = {}, {}
    for index, arg in enumerate(kernel.arg_names):
        if arg in constants:
            signature[arg] = "constexpr"
            constexprs[(index,)] = constants[arg]
        else:  # data pointers in the model's dtype; the rest are int32 sizes and strides
            signature[arg] = kinds.get(arg, f"*{dtype}" if arg.endswith("_ptr") else "i32")
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    options = {"num_warps": warps, "enable_fp_fusion": name != "rope_and_cache"}  # as launched
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    # The rotation rounds its products and their sum apart, as torch does: no fused multiply-add.
    exact = name != "rope_and_cache" or "fma." not in compiled.asm["ptx"]
    print(name, len(compiled.asm["cubin"]) > 0 and exact)
"""  # fmt: skip


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_every_kernel_compiles_for_a_hopper_gpu(dtype: str, tmp_path: Path) -> None:
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", COMPILE_FOR_HOPPER, dtype],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    compiled = [line.split() for line in done.stdout.splitlines()]
    names = ["rms_norm", "rms_norm", "rope_and_cache", "rope_and_cache", "silu_mul"]
    names += ["paged_decode", "paged_prefill"]
    assert compiled == [[name, "True"] for name in names]
