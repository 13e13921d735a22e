"""The runtime never depends on the HTTP layer: importing it pulls in no web framework."""

from __future__ import annotations

import subprocess
import sys

HTTP_PACKAGES = ("fastapi", "pydantic", "starlette", "sse_starlette", "uvicorn", "app")

PROBE = """
import sys
import model_runtime
from model_runtime import AsyncEncoder, AsyncEngine, resolve_model  # the lazy names load their modules
import model_runtime.engine, model_runtime.models.fetch, model_runtime.models.gguf_convert
import model_runtime.encoder
loaded = sorted({name.split(".")[0] for name in sys.modules} & set(sys.argv[1:]))
print(",".join(loaded))
"""


def test_model_runtime_imports_no_http_layer() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *HTTP_PACKAGES], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"model_runtime imported {out.stdout.strip()}"
