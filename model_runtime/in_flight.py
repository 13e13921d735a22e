"""A step whose sampled tokens are still on the device, and the next step that feeds on them.

On a GPU the host's work around a step (scheduling, building inputs, detokenizing, stop strings)
would leave the device idle if it ran between steps. Instead step N+1 is launched before the host
reads step N's tokens: its input rows take them on the device (`CarriedTokens`), and the host
reads them (`InFlightStep.token_ids`) while step N+1 runs. A sequence that turns out to have
finished at step N has computed one token too many in step N+1; that token is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model_runtime.sampler import on_device
from model_runtime.sequence import Sequence


@dataclass(frozen=True)
class CarriedTokens:
    """Input tokens the host has not read yet: row `dst[i]` of a step's input ids is row `src[i]`
    of `tokens`, the previous step's draw, still on the device."""

    tokens: torch.Tensor  # [S_prev] long
    dst: list[int]
    src: list[int]

    def write_into(self, input_ids: torch.Tensor) -> None:  # input_ids: [T] on the device
        n = len(self.dst)
        if self.dst == self.src == list(range(n)):  # the same sequences in the same rows: the usual case
            input_ids[:n].copy_(self.tokens[:n])
        else:
            device = input_ids.device
            input_ids[on_device(self.dst, device)] = self.tokens[on_device(self.src, device)]


class InFlightStep:
    """The tokens a launched step drew for `seqs` (row order), on their way to the host."""

    def __init__(self, seqs: list[Sequence], tokens: torch.Tensor) -> None:  # tokens: [S] long
        self.seqs = seqs
        self.tokens = tokens
        self.rows = {seq: row for row, seq in enumerate(seqs)}
        self._ready: torch.cuda.Event | None = None
        if tokens.device.type == "cuda":
            # Into pinned memory without waiting; the event says when the copy has landed.
            self._host = tokens.to("cpu", non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()
        else:
            self._host = tokens

    def token_ids(self) -> list[int]:
        """The host sync of the step: waits for its tokens."""
        if self._ready is not None:
            self._ready.synchronize()
        return self._host.tolist()

    def carried_by(self, rows: list[tuple[int, Sequence]]) -> CarriedTokens | None:
        """Which of a step's input rows (row, the sequence whose last token it feeds) take a token
        of this step; None when none does."""
        dst, src = [], []
        for row, seq in rows:
            source = self.rows.get(seq)
            if source is not None:
                dst.append(row)
                src.append(source)
        return CarriedTokens(self.tokens, dst, src) if dst else None
