"""`atenea serve`: run the OpenAI-compatible HTTP server.

Every flag mirrors a `Settings` field; its default is the field's value after ATENEA_* environment
variables, so `ATENEA_PORT=9000 atenea serve` and `atenea serve --port 9000` mean the same.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any

from pydantic import ValidationError

from app.settings import ENV_PREFIX, SECRET_FIELDS, Settings


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
        help_text = f"{field.description} (default: {_shown(name, value)}; env: {env})"
        if typing.get_origin(kind) is list:
            # Repeatable; None (not given) leaves the environment's value in place.
            parser.add_argument(
                _flag(name), dest=name, action="append", default=None, metavar=name.upper(), help=help_text
            )
        elif kind is bool:
            parser.add_argument(
                _flag(name), dest=name, action=argparse.BooleanOptionalAction, default=value, help=help_text
            )
        else:
            parser.add_argument(
                _flag(name),
                dest=name,
                type=kind,
                choices=choices,
                default=value,
                metavar=None if choices else name.upper(),
                help=help_text,
            )
    parser.set_defaults(func=run)


def _shown(name: str, value: Any) -> str:
    """A default as the help shows it: secrets (API keys) are never printed."""
    if value is None or value == []:
        return "unset"
    if name in SECRET_FIELDS:
        return "set, hidden"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def settings_from_args(args: argparse.Namespace) -> Settings:
    lists = {
        name for name, field in Settings.model_fields.items() if typing.get_origin(field.annotation) is list
    }
    given = {name: getattr(args, name) for name in Settings.model_fields}
    return Settings(
        **{name: value for name, value in given.items() if value is not None or name not in lists}
    )


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        raise SystemExit(f"atenea serve: invalid option: {exc}") from exc

    # Imported here: `atenea --help` should not pay for the web stack.
    from app.embedding_runtime import resolved_encoder
    from app.image_runtime import resolved_image_model
    from app.logs import configure_logging
    from app.main import create_app, engine_config_from_settings
    from app.server import serve

    level = "DEBUG" if settings.log_level == "trace" else settings.log_level.upper()
    configure_logging(level, settings.log_format)
    try:
        engine_config = engine_config_from_settings(settings)
    except ValueError as exc:  # resolve_model's answer to a model spec it cannot serve
        raise SystemExit(f"atenea serve: cannot serve model {settings.model!r}: {exc}") from exc
    try:
        resolved_image_model(settings)  # refuse a bad --image-model before loading anything
    except ValueError as exc:
        raise SystemExit(f"atenea serve: cannot serve image model {settings.image_model!r}: {exc}") from exc
    try:
        resolved_encoder(settings)  # likewise a bad --embedding-model
    except ValueError as exc:
        raise SystemExit(
            f"atenea serve: cannot serve embedding model {settings.embedding_model!r}: {exc}"
        ) from exc
    try:
        app = create_app(settings, engine_config=engine_config)
    except (OSError, ValueError) as exc:  # an unreadable or empty --api-key-file
        raise SystemExit(f"atenea serve: {exc}") from exc
    return serve(app, settings.host, settings.port, settings.log_level)
