"""Log-probabilities paired with the text they stand for.

A choice's logprob tokens must concatenate to its text, streamed or not. The detokenizer gives
each token the text it completes (a token ending inside a character gives "", the next one the
whole character) and the stop matcher holds text back and may cut it, so an entry is released
only once all of its text has been emitted, and at the end the entries are cut where the text was.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from model_runtime.api import TokenLogprob, TopLogprob
from model_runtime.sampler import RowLogprobs


@dataclass
class _Pending:
    token_id: int
    piece: str
    start: int  # offset of the piece in the choice's text
    row: RowLogprobs


class LogprobTracker:
    def __init__(self, token_bytes: Callable[[int], bytes], token_text: Callable[[int], str]) -> None:
        self._token_bytes = token_bytes
        self._token_text = token_text
        self._pending: deque[_Pending] = deque()
        self._produced = 0  # characters the detokenizer has produced so far

    def add(self, token_id: int, piece: str, row: RowLogprobs) -> None:
        self._pending.append(_Pending(token_id, piece, self._produced, row))
        self._produced += len(piece)

    def extend_last(self, text: str) -> None:
        """Text flushed from the detokenizer at the end belongs to the last token."""
        if text and self._pending:
            self._pending[-1].piece += text
            self._produced += len(text)

    def release(self, emitted: int) -> list[TokenLogprob]:
        """The entries whose whole text lies within the first `emitted` characters."""
        out = []
        while self._pending and self._pending[0].start + len(self._pending[0].piece) <= emitted:
            out.append(self._entry(self._pending.popleft(), None))
        return out

    def finish(self, emitted: int, cut: bool) -> list[TokenLogprob]:
        """Every remaining entry; after a stop string, those before the cut, their text clipped."""
        out = []
        while self._pending:
            item = self._pending.popleft()
            if cut and item.start >= emitted and item.piece:
                break
            clip = max(0, emitted - item.start)
            out.append(self._entry(item, clip if len(item.piece) > clip else None))
        return out

    def _entry(self, item: _Pending, clip: int | None) -> TokenLogprob:
        if clip is None:
            token, raw = item.piece, self._token_bytes(item.token_id)
        else:
            token = item.piece[:clip]
            raw = token.encode()
        top = tuple(
            TopLogprob(i, self._token_text(i), self._token_bytes(i), lp) for i, lp in item.row.top
        )
        return TokenLogprob(item.token_id, token, raw, item.row.logprob, top)
