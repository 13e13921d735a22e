"""Streaming text out of token ids: the incremental detokenizer and the stop-string matcher.

Both run on the engine thread for every token of every sequence, so each call does a bounded
amount of work: the detokenizer decodes a window of a few tokens, never the whole output, and the
stop matcher only looks at the held-back tail plus the new text.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Collection, Sequence
from typing import Protocol

# What UTF-8 decoding with replacement yields for an incomplete multibyte character.
REPLACEMENT_CHAR = "\ufffd"

# Prompt tokens decoded ahead of the first output token, as vLLM does: the first output token must
# not start the window, or SentencePiece would strip its leading space.
PROMPT_CONTEXT_TOKENS = 5
_MAX_CHAR_BYTES = 4

Decode = Callable[[list[int]], str]


class Detokenizer(Protocol):
    """One sequence's streaming decoder (`IncrementalDetokenizer` or `ByteLevelDetokenizer`)."""

    def add(self, token_id: int) -> str: ...

    def flush(self) -> str: ...


class IncrementalDetokenizer:
    """Turns one sequence's token ids into text, one token at a time.

    The prefix-offset / read-offset technique (vLLM): keep a window of ids starting one emission
    behind, decode `window` and `window[:read]`, and emit the difference. Decoding both from the
    same starting token keeps context-dependent decoders right (SentencePiece strips the space
    of the first token of a decoded string, so a window that started at the new token would lose
    it). While the decoded tail ends in U+FFFD the newest bytes are an incomplete character and
    the text is held back until a later token completes it.

    The text is what the output tokens add after the prompt, special tokens skipped. For
    byte-level BPE that is exactly `decode(output_ids, skip_special_tokens=True)`; for
    SentencePiece the first output token keeps its leading space (" Paris" after "The capital
    of France is"), which `decode(output_ids)` alone would strip. With no prompt ids it is
    exactly `decode(output_ids)` for every tokenizer.

    One case cannot match a full decode: byte-fallback tokenizers (Llama 2) turn a whole run of
    <0xNN> tokens into U+FFFD once any byte in it is invalid, retroactively, while the stream
    has already sent the valid characters before the bad byte. Build non-streamed text from
    these same pieces, never from a separate `decode`, and the two stay identical.

    While text is held (an incomplete character) the window grows by one id per token; a
    character spans at most 4 bytes, so only garbage output holds for long.
    """

    def __init__(
        self,
        decode: Decode,
        prompt_ids: Sequence[int] = (),
        skip_ids: Collection[int] = frozenset(),
    ) -> None:
        self._decode = decode
        self._skip_ids = skip_ids
        self._window, self._prefix_text = _prompt_context(decode, prompt_ids, skip_ids)
        self._read = len(self._window)  # window[:read] has been emitted (or is prompt context)

    def add(self, token_id: int) -> str:
        """Feeds one generated token; returns the text it completes (often "", never partial)."""
        if token_id in self._skip_ids:
            # Special tokens decode to nothing; keeping them out of the window keeps it short.
            return ""
        self._window.append(token_id)
        text = self._decode(self._window)
        if len(text) <= len(self._prefix_text) or text.endswith(REPLACEMENT_CHAR):
            return ""
        return self._advance(text)

    def flush(self) -> str:
        """Returns what is still held back (an incomplete character, as U+FFFD) at the end.

        With it the concatenated output equals the full decode even when the sequence stops
        in the middle of a character.
        """
        if self._read == len(self._window):
            return ""
        text = self._decode(self._window)
        if len(text) <= len(self._prefix_text):
            return ""
        return self._advance(text)

    def _advance(self, text: str) -> str:
        new_text = text[len(self._prefix_text) :]
        # The next window starts where this emission started, so it again decodes the
        # latest emitted tokens as context for the next one.
        self._window = self._window[self._read :]
        self._read = len(self._window)
        self._prefix_text = self._decode(self._window)
        return new_text


class ByteLevelDetokenizer:
    """The streaming decoder of a byte-level BPE tokenizer (GPT-2 style: SmolLM2, Llama 3).

    There a token stands for a fixed run of bytes, whatever its neighbours, and decoding ids is
    decoding the concatenation of their bytes as UTF-8 with replacement. So the text can be
    decoded as the bytes arrive, by Python's incremental UTF-8 decoder, which holds an incomplete
    character back and replaces invalid bytes as the tokenizer does (maximal subparts). It gives
    `IncrementalDetokenizer`'s text, about four times faster (no decode calls into the
    tokenizer per token), and needs no prompt context: no byte-level decoder strips a space.
    """

    def __init__(self, token_bytes: Callable[[int], bytes], skip_ids: Collection[int] = frozenset()) -> None:
        self._token_bytes = token_bytes
        self._skip_ids = skip_ids
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def add(self, token_id: int) -> str:
        """Feeds one generated token; returns the text it completes (often "", never partial)."""
        if token_id in self._skip_ids:
            return ""
        return self._utf8.decode(self._token_bytes(token_id))

    def flush(self) -> str:
        """What is still held back (an incomplete character, as U+FFFD) at the end."""
        return self._utf8.decode(b"", final=True)


def _prompt_context(
    decode: Decode, prompt_ids: Sequence[int], skip_ids: Collection[int]
) -> tuple[list[int], str]:
    """The last few non-special prompt ids, and their text: the context of the first output token.

    The context must decode cleanly: a window that starts inside a character spelled in
    byte-fallback tokens (<0xE6><0x97><0xA5>) decodes that whole byte run as U+FFFD, so the start
    moves back (a character is at most 4 bytes) until the text ends cleanly. A prompt that itself
    ends mid-character (ids from a client) gets no context: the output must not complete it.
    """
    ids: list[int] = []
    for token_id in reversed(prompt_ids):
        if token_id not in skip_ids:
            ids.append(token_id)
            if len(ids) == PROMPT_CONTEXT_TOKENS + _MAX_CHAR_BYTES - 1:
                break
    ids.reverse()
    for size in range(min(PROMPT_CONTEXT_TOKENS, len(ids)), len(ids) + 1):
        context = ids[len(ids) - size :]
        text = decode(context)
        if not text.endswith(REPLACEMENT_CHAR):
            return context, text
    return [], ""


class StopMatcher:
    """Cuts streamed text at the first occurrence of any stop string, never leaking part of one.

    `push` holds back the longest tail of the text that could still grow into a stop string, so
    a stop string split across tokens is caught whole and nothing before it is held back for
    good. Generation ends at the first push that completes a stop string; the text is cut where
    the earliest-starting stop string in the text so far begins (the stop string itself is not
    emitted, as OpenAI does). How the text is split into pushes changes nothing else.
    """

    def __init__(self, stop: Sequence[str]) -> None:
        self._stops = tuple(dict.fromkeys(s for s in stop if s))  # "" would match everywhere
        # Every proper prefix of a stop string: the tails worth holding back.
        self._prefixes = frozenset(s[:i] for s in self._stops for i in range(1, len(s)))
        self._longest_prefix = max((len(p) for p in self._prefixes), default=0)
        self._first_chars = frozenset(s[0] for s in self._stops)
        self._pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit now, whether a stop string completed)."""
        if not self._stops:
            return text, False
        buffer = self._pending + text
        cut = self._first_stop(buffer)
        if cut is not None:
            self._pending = ""
            return buffer[:cut], True
        held = self._held_length(buffer)
        self._pending = buffer[len(buffer) - held :]
        return buffer[: len(buffer) - held], False

    def flush(self) -> str:
        """Returns the held-back tail when the sequence ends for another reason."""
        pending, self._pending = self._pending, ""
        return pending

    def _first_stop(self, buffer: str) -> int | None:
        # The pending tail matched no stop string before, so any match involves the new text;
        # searching the whole (short) buffer is simplest and finds the earliest one.
        cut = None
        for stop in self._stops:
            i = buffer.find(stop)
            if i >= 0 and (cut is None or i < cut):
                cut = i
        return cut

    def _held_length(self, buffer: str) -> int:
        # Scan the tail left to right, so the first hit is the longest held suffix; the
        # first-character test skips most positions without slicing.
        if not self._longest_prefix:  # single-character stops: nothing to hold
            return 0
        tail = buffer[-self._longest_prefix :]
        for i, char in enumerate(tail):
            if char in self._first_chars and tail[i:] in self._prefixes:
                return len(tail) - i
        return 0
