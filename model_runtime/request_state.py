"""Per-sequence output handling on the engine thread: finish rules, detokenization, stop strings,
the grammar's state and logprobs."""

from __future__ import annotations

from collections.abc import Callable, Collection

from model_runtime.api import FinishReason, RequestOutput, TokenLogprob
from model_runtime.detokenizer import Detokenizer, StopMatcher
from model_runtime.logprobs import LogprobTracker
from model_runtime.sampler import RowLogprobs
from model_runtime.sequence import Sequence


class RequestState:
    def __init__(
        self,
        seq: Sequence,
        detokenizer: Detokenizer,
        eos_token_ids: Collection[int],
        token_bytes: Callable[[int], bytes] | None = None,
        token_text: Callable[[int], str] | None = None,
    ) -> None:
        self.seq = seq
        self.detokenizer = detokenizer
        self.stop = StopMatcher(seq.params.stop)
        params = seq.params
        self.stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            self.stop_ids |= set(eos_token_ids)
        self.logprobs: LogprobTracker | None = None
        if params.logprobs is not None and token_bytes is not None and token_text is not None:
            self.logprobs = LogprobTracker(token_bytes, token_text)
        self.emitted = 0  # characters of text sent so far
        self.prompt_logprobs: list[TokenLogprob] | None = None  # sent with the first output

    def on_token(
        self, token_id: int, row: RowLogprobs | None = None
    ) -> tuple[str, FinishReason | None, list[TokenLogprob] | None]:
        """Appends a sampled token; returns the text it adds, the finish reason if it ends here,
        and the logprob entries whose text is now out."""
        seq = self.seq
        seq.token_ids.append(token_id)
        grammar_done = False
        if seq.matcher is not None:
            seq.matcher.consume_token(token_id)
            # A complete sentence of the grammar allows nothing but EOS: end here (even with
            # ignore_eos, which must not push a constrained output past its grammar).
            grammar_done = seq.matcher.is_stopped()
        if token_id in self.stop_ids:
            return self._finish(self.stop.flush(), FinishReason.STOP, cut=False)
        piece = self.detokenizer.add(token_id)
        if self.logprobs is not None and row is not None:
            self.logprobs.add(token_id, piece, row)
        text, stopped = self.stop.push(piece)
        if stopped:
            return self._finish(text, FinishReason.STOP, cut=True)
        if grammar_done:
            return self._end(text, FinishReason.STOP)
        if seq.num_tokens >= seq.max_total_tokens:
            return self._end(text, FinishReason.LENGTH)
        self.emitted += len(text)
        released = self.logprobs.release(self.emitted) if self.logprobs is not None else None
        return text, None, released

    def _end(self, text: str, reason: FinishReason) -> tuple[str, FinishReason, list[TokenLogprob] | None]:
        """Ends without a stop: flushes what the detokenizer and the stop matcher hold."""
        # An incomplete character at the very end is dropped, never sent as U+FFFD.
        tail = self.detokenizer.flush().rstrip("\ufffd")
        if self.logprobs is not None:
            self.logprobs.extend_last(tail)
        tail, stopped = self.stop.push(tail)
        if stopped:  # the flushed tail completed a stop string
            return self._finish(text + tail, FinishReason.STOP, cut=True)
        return self._finish(text + tail + self.stop.flush(), reason, cut=False)

    def _finish(
        self, text: str, reason: FinishReason, cut: bool
    ) -> tuple[str, FinishReason, list[TokenLogprob] | None]:
        self.emitted += len(text)
        released = self.logprobs.finish(self.emitted, cut) if self.logprobs is not None else None
        return text, reason, released

    def output(
        self,
        text: str,
        new_tokens: list[int],
        reason: FinishReason | None,
        logprobs: list[TokenLogprob] | None = None,
    ) -> RequestOutput:
        prompt_logprobs, self.prompt_logprobs = self.prompt_logprobs, None
        return RequestOutput(
            request_id=self.seq.request_id,
            text=text,
            token_ids=new_tokens,
            finished=reason is not None,
            finish_reason=reason,
            prompt_tokens=self.seq.num_prompt_tokens,
            completion_tokens=self.seq.num_output_tokens,
            index=self.seq.index,
            logprobs=logprobs if self.logprobs is not None else None,
            prompt_logprobs=prompt_logprobs,
        )
