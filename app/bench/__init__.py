"""`atenea bench ...`: benchmark tools that print ratios against a baseline, with the device named.

`serve` loads a running OpenAI-compatible server over HTTP; `engine` runs the engine in-process
against `transformers.generate()` on the same model; `prefix` times the first token of a request
whose long prefix is cached against the same request cold. This module holds what both share: the CLI
registration and a few statistics helpers.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def throughput(tokens: int, seconds: float) -> float:
    """Tokens per second; 0 when nothing was timed, so an empty run never divides by zero."""
    return tokens / seconds if seconds > 0 else 0.0


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100, linear interpolation as numpy does), None for no values."""
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def describe_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    """Mean, median and p99 of durations given in seconds, reported in milliseconds."""
    if not seconds:
        return {"mean": None, "median": None, "p99": None}
    ms = [s * 1000.0 for s in seconds]
    return {"mean": float(np.mean(ms)), "median": percentile(ms, 50), "p99": percentile(ms, 99)}


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {path}", file=sys.stderr)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `bench serve`, `bench engine`, `bench prefix` and `bench images` to the `atenea` command.

    Each leaf parser sets `func`, a callable taking the parsed namespace and returning an exit code.
    """
    # Imported here: the submodules import this module's helpers.
    from app.bench import engine, images, prefix, serve

    bench = subparsers.add_parser("bench", help="benchmark a running server or the engine")
    tools = bench.add_subparsers(dest="bench_command", metavar="{serve,engine,prefix,images}", required=True)
    serve.register(tools)
    engine.register(tools)
    prefix.register(tools)
    images.register(tools)


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry (`python -c 'from app.bench import main; main()' engine ...`)."""
    parser = argparse.ArgumentParser(prog="atenea")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)
