"""Messages quote client input only in short excerpts, whoever wrote them."""

from __future__ import annotations

from app.errors import engine_error
from app.excerpts import MESSAGE_CHARS, bounded_message, excerpt
from model_runtime import InvalidPrompt


def test_excerpt_keeps_short_text_and_cuts_long_text() -> None:
    assert excerpt("gpt-4") == "gpt-4"
    cut = excerpt("x" * 10_000)
    assert cut.startswith("x" * 64) and cut.endswith("(10000 characters)") and len(cut) < 100


def test_engine_messages_quoting_input_are_bounded() -> None:
    quoted = "9" * 400
    error = engine_error(InvalidPrompt(f"logit_bias: token id {quoted} is not in the vocabulary."))
    message = error.detail.message
    assert quoted not in message and message.endswith("is not in the vocabulary.")
    assert len(bounded_message("word " * 100_000)) <= MESSAGE_CHARS
    assert bounded_message("a plain message") == "a plain message"
