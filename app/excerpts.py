"""Client input quoted back in error messages and logs, cut short: a message never echoes megabytes."""

from __future__ import annotations

EXCERPT_CHARS = 64


def excerpt(value: str, limit: int = EXCERPT_CHARS) -> str:
    """`value`, or its start and a note of how much was cut."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}... ({len(value)} characters)"
