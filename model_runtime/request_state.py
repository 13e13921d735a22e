"""Per-request output handling on the engine thread: finish rules, detokenization, stop strings."""

from __future__ import annotations

from collections.abc import Collection

from model_runtime.api import FinishReason, RequestOutput
from model_runtime.detokenizer import IncrementalDetokenizer, StopMatcher
from model_runtime.sequence import Sequence


class RequestState:
    def __init__(
        self, seq: Sequence, detokenizer: IncrementalDetokenizer, eos_token_ids: Collection[int]
    ) -> None:
        self.seq = seq
        self.detokenizer = detokenizer
        self.stop = StopMatcher(seq.params.stop)
        params = seq.params
        self.stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            self.stop_ids |= set(eos_token_ids)

    def on_token(self, token_id: int) -> tuple[str, FinishReason | None]:
        """Appends a sampled token; returns the text it adds and the finish reason, if it ends here."""
        seq = self.seq
        seq.token_ids.append(token_id)
        if token_id in self.stop_ids:
            return self.stop.flush(), FinishReason.STOP
        text, stopped = self.stop.push(self.detokenizer.add(token_id))
        if stopped:
            return text, FinishReason.STOP
        if seq.num_tokens >= seq.max_total_tokens:
            # An incomplete character at the very end is dropped, never sent as U+FFFD.
            tail, stopped = self.stop.push(self.detokenizer.flush().rstrip("\ufffd"))
            reason = FinishReason.STOP if stopped else FinishReason.LENGTH
            return text + tail + ("" if stopped else self.stop.flush()), reason
        return text, None

    def output(self, text: str, new_tokens: list[int], reason: FinishReason | None) -> RequestOutput:
        return RequestOutput(
            request_id=self.seq.request_id,
            text=text,
            token_ids=new_tokens,
            finished=reason is not None,
            finish_reason=reason,
            prompt_tokens=self.seq.num_prompt_tokens,
            completion_tokens=self.seq.num_output_tokens,
        )
