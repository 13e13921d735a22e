"""The C++ kernels for x86 CPUs (AVX2), built once per source and torch version.

`torch.utils.cpp_extension` compiles `cpu_blockq.cpp` (linear layers), `cpu_attention.cpp`
(decode attention), `cpu_elementwise.cpp` (RMSNorm, SwiGLU, RoPE) and `cpu_decoder.cpp` (a whole
decode step through every layer, from those parts) with the system's C++ compiler
into `$ATENEA_HOME/kernels`, on first use or ahead of time by `atenea pull`: about a minute on two
cores, then a load in milliseconds. Where they cannot be built (no AVX2, no compiler, another
platform) `load_kernels` says so once and the runtime keeps torch's own kernels;
`ATENEA_CPU_KERNELS=0` chooses that too.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)

SOURCES = [
    Path(__file__).with_name(name)
    for name in (
        "cpu_bindings.cpp",
        "cpu_blockq.cpp",
        "cpu_attention.cpp",
        "cpu_elementwise.cpp",
        "cpu_decoder.cpp",
        "cpu_sampling.cpp",
    )
]
HEADERS = [
    Path(__file__).with_name(name)
    for name in ("cpu_simd.h", "cpu_rows.h", "cpu_blockq.h", "cpu_attention.h", "cpu_decoder.h")
]


def cpu_supports_kernels() -> bool:
    """AVX2 with FMA on x86-64 Linux: the kernels' instruction set."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        return False
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def build_dir() -> Path:
    home = Path(os.environ.get("ATENEA_HOME") or Path.home() / ".cache" / "atenea")
    # The sources' folder counts too: ninja's build file names them by absolute path, so two
    # checkouts of the same sources sharing one folder would rebuild it for each other in turn.
    digest = hashlib.sha256(
        b"".join(p.read_bytes() for p in SOURCES + HEADERS)
        + torch.__version__.encode()
        + str(SOURCES[0].parent).encode()
    )
    return home / "kernels" / f"cpu-{digest.hexdigest()[:16]}"


@cache
def load_kernels() -> ModuleType | None:
    """The compiled kernels, built on first use; None where they are unavailable."""
    if os.environ.get("ATENEA_CPU_KERNELS", "1") == "0" or not cpu_supports_kernels():
        return None
    from torch.utils.cpp_extension import load

    folder = build_dir()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return load(
            name="atenea_cpu_kernels",
            sources=[str(p) for p in SOURCES],
            build_directory=str(folder),
            extra_cflags=["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as exc:  # noqa: BLE001 - a missing compiler must not stop the server
        log.warning("CPU kernels unavailable, using torch's: %s", exc)
        return None
