"""Continuous batching: which sequences run this step, and how many of their tokens.

Each step has a token budget. Running sequences that decode come first (one token each), then
prefill chunks — of sequences part-way through their prompt, then of newly admitted ones — fill
what is left, so a long prompt is spread over several steps instead of stalling every decode.
When KV blocks run out, the most recently admitted sequence is preempted: its blocks are freed
and it waits to be recomputed from its tokens (what of it is still cached is not recomputed).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from model_runtime.api import FinishReason
from model_runtime.kv_cache import BlockManager
from model_runtime.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledChunk:
    seq: Sequence
    start: int  # first token position processed this step
    length: int  # tokens processed this step

    @property
    def samples(self) -> bool:
        """Whether this chunk reaches the end of the sequence's tokens, so a new token is drawn."""
        return self.start + self.length == self.seq.num_tokens


@dataclass
class Batch:
    decodes: list[ScheduledChunk] = field(default_factory=list)  # length 1 each
    prefills: list[ScheduledChunk] = field(default_factory=list)

    @property
    def chunks(self) -> list[ScheduledChunk]:
        return self.decodes + self.prefills

    @property
    def num_tokens(self) -> int:
        return len(self.decodes) + sum(c.length for c in self.prefills)

    def __bool__(self) -> bool:
        return bool(self.decodes or self.prefills)

    def without_finished(self) -> Batch:
        """The chunks of sequences that have not finished since they were scheduled."""
        return Batch(
            [c for c in self.decodes if not c.seq.is_finished],
            [c for c in self.prefills if not c.seq.is_finished],
        )


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence, front: bool = False) -> None:
        """Queues `seq`; `front` puts it before the others (a sample of a request already running)."""
        seq.status = SequenceStatus.WAITING
        if front:
            self.waiting.appendleft(seq)
        else:
            self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> Batch:
        batch = Batch()
        budget = self.max_num_batched_tokens

        # Decodes (and any sequence with a partly computed prompt), oldest first.
        for seq in list(self.running):
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted earlier in this loop
            if seq.num_tokens >= seq.max_total_tokens:
                continue  # its last token, still on the device (see in_flight.py), ends it
            length = min(seq.num_pending_tokens, budget)
            if not self._reserve(seq, seq.num_computed_tokens + length, batch):
                continue
            chunk = ScheduledChunk(seq, seq.num_computed_tokens, length)
            (batch.decodes if length == 1 and chunk.samples else batch.prefills).append(chunk)
            budget -= length

        # Preemption may have dropped chunks counted above, so take the budget from the batch.
        budget = self.max_num_batched_tokens - batch.num_tokens
        # Admit waiting sequences while there is room in the budget, the batch and the cache.
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            cached = self.blocks.match_prefix(seq)  # a known prefix needs no compute
            length = min(seq.num_pending_tokens, budget)
            if not self.blocks.can_allocate(seq, seq.num_computed_tokens + length):
                self.blocks.free(seq)  # its cached blocks stay cached for the next try
                break
            self.waiting.popleft()
            self.blocks.record_lookup(seq.num_tokens, cached)
            self.blocks.allocate(seq, seq.num_computed_tokens + length)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.prefills.append(ScheduledChunk(seq, seq.num_computed_tokens, length))
            budget -= length
        return batch

    def _reserve(self, seq: Sequence, num_tokens: int, batch: Batch) -> bool:
        """Makes room for `seq` to hold `num_tokens`, preempting the newest sequences if needed.

        Returns False when `seq` itself had to be preempted.
        """
        while not self.blocks.can_allocate(seq, num_tokens):
            victim = self.running[-1]
            self._preempt(victim, batch)
            if victim is seq:
                return False
        self.blocks.allocate(seq, num_tokens)
        return True

    def _preempt(self, seq: Sequence, batch: Batch) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        # A victim may already be in this step's batch (scheduled before the sequence that needs
        # its blocks): drop it from there too.
        batch.decodes = [c for c in batch.decodes if c.seq is not seq]
        batch.prefills = [c for c in batch.prefills if c.seq is not seq]
        self.waiting.appendleft(seq)

    def advance(self, chunk: ScheduledChunk) -> None:
        """Records that the chunk's tokens now have K/V in the cache."""
        chunk.seq.num_computed_tokens = chunk.start + chunk.length
        self.blocks.register_full_blocks(chunk.seq)

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """Ends `seq` wherever it is and returns its blocks."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
