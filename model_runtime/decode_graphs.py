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
        self.input_ids = torch.zeros(b, dtype=torch.long, device=device)
        self.positions = torch.zeros(b, dtype=torch.long, device=device)
        self.slot_mapping = torch.zeros(b, dtype=torch.long, device=device)
        self.block_tables = torch.zeros(b, w, dtype=torch.int32, device=device)
        self.context_lens = torch.ones(b, dtype=torch.int32, device=device)
        self.logits_indices = torch.arange(b, device=device)
        pin = device.type == "cuda"
        # Host staging rows, pinned so the copies to the device do not wait on the host.
        self.host_long = torch.zeros(3, b, dtype=torch.long, pin_memory=pin)  # ids, positions, slots
        self.host_lens = torch.ones(b, dtype=torch.int32, pin_memory=pin)
        self.host_tables = torch.zeros(b, w, dtype=torch.int32, pin_memory=pin)
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
        self._fill_padding(0, self.max_batch)
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

    def _fill_padding(self, start: int, end: int) -> None:
        """Rows [start, end) write to the scratch block and attend to one token of it."""
        scratch_slot = self.scratch_block * self.block_size
        self.host_long[:, start:end] = 0
        self.host_long[2, start:end] = scratch_slot
        self.host_lens[start:end] = 1
        self.host_tables[start:end] = self.scratch_block
        self._upload(start, end)

    def _upload(self, start: int, end: int) -> None:
        self.input_ids[start:end].copy_(self.host_long[0, start:end], non_blocking=True)
        self.positions[start:end].copy_(self.host_long[1, start:end], non_blocking=True)
        self.slot_mapping[start:end].copy_(self.host_long[2, start:end], non_blocking=True)
        self.context_lens[start:end].copy_(self.host_lens[start:end], non_blocking=True)
        self.block_tables[start:end].copy_(self.host_tables[start:end], non_blocking=True)

    def run(
        self,
        token_ids: Sequence[int],  # the token each sequence feeds in
        positions: Sequence[int],  # its position
        block_tables: Sequence[Sequence[int]],
    ) -> torch.Tensor:  # [n, V] float32
        n = len(token_ids)
        size = self.bucket(n)
        self.host_long[0, :n] = torch.tensor(token_ids, dtype=torch.long)
        pos = torch.tensor(positions, dtype=torch.long)
        self.host_long[1, :n] = pos
        self.host_lens[:n] = (pos + 1).to(torch.int32)
        for i, table in enumerate(block_tables):
            self.host_tables[i, : len(table)] = torch.tensor(table, dtype=torch.int32)
        tables = self.host_tables[:n]
        self.host_long[2, :n] = tables.gather(1, (pos // self.block_size)[:, None]).squeeze(1).long()
        self.host_long[2, :n] *= self.block_size
        self.host_long[2, :n] += pos % self.block_size
        self._upload(0, n)
        if size > n:
            self._fill_padding(n, size)
        if not self.capture:
            with torch.inference_mode():
                return self._forward(size)[:n]
        graph, out = self.graphs[size]
        graph.replay()
        return out[:n]
