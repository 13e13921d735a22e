"""`atenea`: the command line. Subcommands live in their own modules and register themselves."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pydantic import ValidationError

# Each module defines `register(subparsers)`, which adds its parser and sets `func(args) -> int`.
COMMAND_MODULES: tuple[str, ...] = ("app.commands.serve", "app.commands.pull", "app.bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atenea", description="Atenea: an OpenAI-compatible inference server."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
    except ValidationError as exc:
        # Parser defaults come from ATENEA_* variables; a bad one is reported, not a traceback.
        print(f"atenea: invalid ATENEA_* environment setting: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
