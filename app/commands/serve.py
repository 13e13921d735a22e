"""`atenea serve`: run the OpenAI-compatible HTTP server.

Every flag mirrors a `Settings` field; its default is the field's value after ATENEA_* environment
variables, so `ATENEA_PORT=9000 atenea serve` and `atenea serve --port 9000` mean the same.
"""

from __future__ import annotations

import argparse
import logging
import types
import typing
from typing import Any

from pydantic import ValidationError

from app.settings import ENV_PREFIX, Settings


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _argparse_kind(annotation: Any) -> tuple[type, list[str] | None]:
    """(type, choices) for a Settings annotation such as `int | None` or `Literal["a", "b"]`."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is typing.Literal:
        return str, [str(choice) for choice in typing.get_args(annotation)]
    return annotation, None


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = Settings()  # reads the environment: the help shows the effective defaults
    parser = subparsers.add_parser(
        "serve",
        help="run the OpenAI-compatible HTTP server",
        description="Serve a model over the OpenAI HTTP API (models, chat completions, completions).",
    )
    for name, field in Settings.model_fields.items():
        kind, choices = _argparse_kind(field.annotation)
        value = getattr(defaults, name)
        env = f"{ENV_PREFIX}{name.upper()}"
        parser.add_argument(
            _flag(name),
            dest=name,
            type=kind,
            choices=choices,
            default=value,
            metavar=None if choices else name.upper(),
            help=f"{field.description} (default: {'unset' if value is None else value}; env: {env})",
        )
    parser.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(**{name: getattr(args, name) for name in Settings.model_fields})


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        raise SystemExit(f"atenea serve: invalid option: {exc}") from exc

    # Imported here: `atenea --help` should not pay for the web stack.
    import uvicorn

    from app.main import create_app, engine_config_from_settings

    level = "DEBUG" if settings.log_level == "trace" else settings.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        engine_config = engine_config_from_settings(settings)
    except ValueError as exc:  # resolve_model's answer to a model spec it cannot serve
        raise SystemExit(f"atenea serve: cannot serve model {settings.model!r}: {exc}") from exc
    app = create_app(settings, engine_config=engine_config)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)
    return 0
