"""Client input quoted back in error messages and logs, cut short: a message never echoes megabytes."""

from __future__ import annotations

import re

EXCERPT_CHARS = 64
MESSAGE_CHARS = 400
_LONG_RUN = re.compile(rf"\S{{{EXCERPT_CHARS + 1},}}")


def excerpt(value: str, limit: int = EXCERPT_CHARS) -> str:
    """`value`, or its start and a note of how much was cut."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}... ({len(value)} characters)"


def bounded_message(message: str) -> str:
    """A message built elsewhere (the engine's errors quote what the client sent): every long run
    of characters becomes an excerpt, and the whole stays under MESSAGE_CHARS."""
    shortened = _LONG_RUN.sub(lambda run: excerpt(run.group()), message)
    return excerpt(shortened, MESSAGE_CHARS - 30)
