"""CUDA graphs of decode-only steps: one graph per batch-size bucket, replayed with new inputs.

A small model's decode step on a GPU is mostly kernel-launch overhead (hundreds of launches of a
few microseconds each); a graph replays them all with one launch. A graph replays fixed shapes and
fixed addresses, so every input lives in a static device buffer sized for the largest bucket, and a
batch of `n` sequences runs the smallest bucket `>= n` with the rows past `n` padded: they read and
write only a scratch KV block that no sequence owns, and their logits are dropped.

With `capture=False` the same buffers and padding run eagerly, which is how CPU tests exercise
everything here but the capture itself.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from model_runtime.attention import AttentionMetadata, KVCache
from model_runtime.in_flight import CarriedTokens
from model_runtime.models.llama import LlamaModel

log = logging.getLogger(__name__)


def bucket_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 8 up to `max_batch` (and `max_batch` itself)."""
    sizes = [s for s in (1, 2, 4) if s < max_batch] + list(range(8, max_batch, 8))
    return sorted({*sizes, max_batch})


class DecodeGraphs:
    def __init__(
        self,
        model: LlamaModel,
        caches: list[KVCache],
        block_size: int,
        max_batch: int,
        max_blocks_per_seq: int,
        scratch_block: int,
        capture: bool = True,
    ) -> None:
        self.model = model
        self.caches = caches
        self.block_size = block_size
        self.sizes = bucket_sizes(max_batch)
        self.max_batch = self.sizes[-1]
        self.scratch_block = scratch_block
        device = next(model.parameters()).device
        b, w = self.max_batch, max_blocks_per_seq
        self.width = w
        # Every input in two device buffers, each filled by one copy from pinned host memory, so a
        # step's inputs cost two copies whatever the batch: ids, positions and slots in `longs`;
        # context lengths then block tables in `ints`.
        self.longs = torch.zeros(3, b, dtype=torch.long, device=device)
        self.ints = torch.zeros(b + b * w, dtype=torch.int32, device=device)
        self.input_ids, self.positions, self.slot_mapping = self.longs
        self.context_lens = self.ints[:b]
        self.block_tables = self.ints[b:].view(b, w)
        # Two host twins, used in turn: with overlapped steps (in_flight.py) the host fills step
        # N+1's inputs before it knows step N's copy has left, but step N-1's has (its tokens
        # were read), so the twin that step N-1 used is free.
        pin = device.type == "cuda"
        self.staging = [HostInputs(b, w, pin), HostInputs(b, w, pin)]
        self.turn = 0
        self.logits_indices = torch.arange(b, device=device)
        self.capture = capture
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        if capture:
            self._capture_all()

    def bucket(self, n: int) -> int:
        return next(s for s in self.sizes if s >= n)

    def _forward(self, size: int) -> torch.Tensor:  # -> [size, V]
        meta = AttentionMetadata(
            slot_mapping=self.slot_mapping[:size],
            num_decodes=size,
            decode_slots=None,
            decode_mask=None,
            prefills=[],
            block_tables=self.block_tables[:size],
            context_lens=self.context_lens[:size],
            block_size=self.block_size,
        )
        return self.model(
            self.input_ids[:size], self.positions[:size], self.caches, meta, self.logits_indices[:size]
        )

    @torch.inference_mode()
    def _capture_all(self) -> None:
        self._fill_padding()
        pool = torch.cuda.graph_pool_handle()
        # Largest first: the smaller graphs then fit in the memory pool the largest one reserved.
        for size in reversed(self.sizes):
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up outside capture: kernels compile, allocator settles
                self._forward(size)
                self._forward(size)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = self._forward(size)
            self.graphs[size] = (graph, out)
        torch.cuda.synchronize()
        log.info("captured CUDA graphs for decode batch sizes %s", self.sizes)

    def _fill_padding(self) -> None:
        """Every row writes to the scratch block and attends to one token of it (for capture)."""
        host = self.staging[self.turn]
        host.longs[:] = 0
        host.longs[2] = self.scratch_block * self.block_size
        host.lens[:] = 1
        host.write_tables([], self.max_batch, self.scratch_block)
        self._upload(host, self.max_batch)

    def _upload(self, host: HostInputs, size: int) -> None:
        self.longs.copy_(host.longs, non_blocking=True)
        used = self.max_batch + size * self.width  # the lengths, then the first `size` table rows
        self.ints[:used].copy_(host.ints[:used], non_blocking=True)

    def run(
        self,
        token_ids: Sequence[int],  # the token each sequence feeds in
        positions: Sequence[int],  # its position
        block_tables: Sequence[Sequence[int]],
        carried: CarriedTokens | None = None,  # input tokens still on the device
    ) -> torch.Tensor:  # [n, V] float32
        n = len(token_ids)
        size = self.bucket(n)
        bs, pad = self.block_size, size - n
        slots = [table[p // bs] * bs + p % bs for table, p in zip(block_tables, positions, strict=True)]
        host, self.turn = self.staging[self.turn], 1 - self.turn
        # Padded rows: token 0 at position 0, written to the scratch block's first slot.
        host.longs[:, :size] = torch.tensor(
            [*token_ids, *[0] * pad, *positions, *[0] * pad, *slots, *[self.scratch_block * bs] * pad],
            dtype=torch.long,
        ).view(3, size)
        host.lens[:size] = host.longs[1, :size] + 1
        host.write_tables(block_tables, pad, self.scratch_block)
        self._upload(host, size)
        if carried is not None:
            carried.write_into(self.input_ids)
        if not self.capture:
            with torch.inference_mode():
                return self._forward(size)[:n]
        graph, out = self.graphs[size]
        graph.replay()
        return out[:n]


class HostInputs:
    """One host twin of the static input buffers (see `DecodeGraphs`)."""

    def __init__(self, batch: int, width: int, pin: bool) -> None:
        self.longs = torch.zeros(3, batch, dtype=torch.long, pin_memory=pin)  # ids, positions, slots
        self.ints = torch.zeros(batch + batch * width, dtype=torch.int32, pin_memory=pin)
        self.lens = self.ints[:batch]
        self.tables = self.ints[batch:].view(batch, width)
        # The table each row was written from, and how much of it: a step writes only what a
        # sequence's table gained since (it grows by a block every `block_size` tokens). A table
        # list is only ever appended to; freed blocks leave the sequence a new list (kv_cache.py),
        # so a row whose table is another object is rewritten whole.
        self.row_tables: list[Sequence[int] | None] = [None] * batch
        self.row_lengths = [0] * batch

    def write_tables(
        self, block_tables: Sequence[Sequence[int]], scratch_rows: int, scratch_block: int
    ) -> None:
        """Table rows: the sequences' tables, then `scratch_rows` rows that read `scratch_block`.
        Entries a row already holds are not written again."""
        rows, lengths = self.row_tables, self.row_lengths
        for i, table in enumerate(block_tables):
            start = lengths[i] if rows[i] is table else 0
            if len(table) > start:
                self.tables[i, start : len(table)] = torch.tensor(table[start:], dtype=torch.int32)
            rows[i], lengths[i] = table, len(table)
        n = len(block_tables)
        if scratch_rows:
            self.tables[n : n + scratch_rows, 0] = scratch_block
            rows[n : n + scratch_rows] = [None] * scratch_rows
