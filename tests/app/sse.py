"""Reading an SSE body the way OpenAI's clients do: `data:` lines, comments ignored."""

from __future__ import annotations

import json
from typing import Any

DONE = "[DONE]"


def data_lines(body: str) -> list[str]:
    """The payload of every `data:` event, in order ([DONE] included)."""
    events = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        data = [line[len("data:") :].lstrip(" ") for line in block.split("\n") if line.startswith("data:")]
        if data:
            events.append("\n".join(data))
    return events


def json_events(body: str) -> list[dict[str, Any]]:
    """Every event but the final [DONE], parsed; asserts [DONE] comes last, once."""
    events = data_lines(body)
    assert events and events[-1] == DONE, events[-3:]
    assert events.count(DONE) == 1
    return [json.loads(e) for e in events[:-1]]
