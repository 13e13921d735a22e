"""`atenea`: the command line. Subcommands live in their own modules and register themselves."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from pydantic import ValidationError

# Each module defines `register(subparsers)`, which adds its parser and sets `func(args) -> int`.
COMMAND_MODULES: tuple[str, ...] = (
    "app.commands.serve",
    "app.commands.chat",
    "app.commands.complete",
    "app.commands.models",
    "app.bench",
    "app.commands.pull",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atenea", description="Atenea: an OpenAI-compatible inference server."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    show_defaults(parser)
    return parser


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every flag's help states its default: flags that do not say it themselves get argparse's
    value appended, in every subcommand, so a flag added later is documented too."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                show_defaults(subparser)
        elif action.option_strings and action.help not in (None, argparse.SUPPRESS):
            if "default:" not in action.help and action.default is not argparse.SUPPRESS:
                action.help += " (default: %(default)s)"
        elif action.option_strings and action.help is None and action.default is not argparse.SUPPRESS:
            action.help = "(default: %(default)s)"


# After a parallel region, libgomp's threads spin this many times before they sleep (its default:
# 300,000, about a millisecond here). At decode sizes the engine's threads meet at a barrier every
# few dozen microseconds, so a short spin still catches each phase; a long one keeps a core busy
# through the step's Python work, time the server's event loop and the other requests need. On
# 2 cores, 16 streams went from 203-233 to 233-243 tok/s. libgomp reads it once, when torch loads
# it, so it is set before any import of torch, unless the user has chosen a value.
OPENMP_SPIN_COUNT = "20000"


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("GOMP_SPINCOUNT", OPENMP_SPIN_COUNT)
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
