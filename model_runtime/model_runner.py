"""Owns the model and its KV tensors; turns a scheduled batch into tensors and returns logits.

On a GPU with Triton, decodes read the cache through their block tables and decode-only steps
replay CUDA graphs (`decode_graphs.py`). On an AVX2 CPU decodes read them through a C++ kernel, and
decode-only steps run every layer in one C++ call (`cpu_decoder.py`). Elsewhere decodes gather
their context slots.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from model_runtime.attention import AttentionMetadata, KVCache, PrefillSlice
from model_runtime.cpu_decoder import CpuDecoder
from model_runtime.decode_graphs import DecodeGraphs
from model_runtime.in_flight import CarriedTokens
from model_runtime.kernels.cpu_extension import load_kernels
from model_runtime.kernels.paged_decode import triton_available
from model_runtime.models.llama import LlamaModel
from model_runtime.scheduler import Batch, ScheduledChunk

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepInputs:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    meta: AttentionMetadata
    logits_indices: torch.Tensor  # [S] rows whose logits are sampled
    sampled_chunks: list[ScheduledChunk]  # the S chunks, in row order


class ModelRunner:
    def __init__(
        self,
        model: LlamaModel,
        num_blocks: int,
        block_size: int,
        max_model_len: int | None = None,
        max_num_seqs: int = 64,
        cuda_graphs: bool = True,
        kv_dtype: torch.dtype | None = None,
    ) -> None:
        self.model = model
        self.block_size = block_size
        self.num_blocks = num_blocks
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        # The cache's storage type; arithmetic stays in the model's dtype (see `attention.py`).
        self.kv_dtype = kv_dtype or self.dtype
        s = model.shape
        # One block more than the block manager hands out: padded rows of a graph write there.
        slots = (num_blocks + 1) * block_size
        # caches: num_layers x ([num_slots, KVH, D] keys, same for values)
        self.caches = [
            KVCache(
                torch.zeros(slots, s.num_kv_heads, s.head_dim, dtype=self.kv_dtype, device=self.device),
                torch.zeros(slots, s.num_kv_heads, s.head_dim, dtype=self.kv_dtype, device=self.device),
            )
            for _ in range(s.num_layers)
        ]
        # Decodes read the cache through block tables where a kernel does it (Triton on a GPU, C++
        # on an AVX2 CPU); prefill chunks do on a GPU, and get an SDPA call each on a CPU.
        self.block_table_prefills = self.device.type == "cuda" and triton_available()
        self.block_table_decodes = self.block_table_prefills or (
            self.device.type == "cpu" and self.dtype == torch.float32 and load_kernels() is not None
        )
        # Decode-only steps on an AVX2 CPU: every layer in one C++ call.
        self.cpu_decoder = (
            CpuDecoder.build(model, self.caches, block_size)
            if self.device.type == "cpu" and self.block_table_decodes
            else None
        )
        self.graphs: DecodeGraphs | None = None
        if self.block_table_prefills and cuda_graphs:
            max_len = max_model_len or num_blocks * block_size
            self.graphs = DecodeGraphs(
                model,
                self.caches,
                block_size,
                max_batch=max_num_seqs,
                max_blocks_per_seq=-(-max_len // block_size),
                scratch_block=num_blocks,
            )

    @staticmethod
    def kv_bytes_per_block(model: LlamaModel, block_size: int, dtype: torch.dtype) -> int:
        s = model.shape
        element = torch.empty((), dtype=dtype).element_size()
        return 2 * s.num_layers * block_size * s.num_kv_heads * s.head_dim * element

    @torch.inference_mode()
    def run(
        self, batch: Batch, carried: CarriedTokens | None = None
    ) -> tuple[torch.Tensor, list[ScheduledChunk]]:
        """Runs one step; returns logits `[S, V]` for the chunks that sample, and those chunks.

        `carried` names the input rows whose token is still on the device: the host's copy of
        those tokens (`seq.token_ids`) holds a stand-in there.
        """
        if self.graphs is not None and not batch.prefills and len(batch.decodes) <= self.graphs.max_batch:
            decodes = batch.decodes
            logits = self.graphs.run(
                [c.seq.token_ids[c.start] for c in decodes],
                [c.start for c in decodes],
                [c.seq.block_table for c in decodes],
                carried,
            )
            return logits, decodes
        inputs = self.prepare(batch)
        if carried is not None:
            carried.write_into(inputs.input_ids)
        if self.cpu_decoder is not None and not batch.prefills:
            logits = self.cpu_decoder.run(
                inputs.input_ids, inputs.positions, inputs.meta, inputs.logits_indices
            )
            return logits, inputs.sampled_chunks
        logits = self.model(
            inputs.input_ids, inputs.positions, self.caches, inputs.meta, inputs.logits_indices
        )
        return logits, inputs.sampled_chunks

    def prepare(self, batch: Batch) -> StepInputs:
        ids: list[int] = []
        positions: list[int] = []
        sampled_rows: list[int] = []
        sampled: list[ScheduledChunk] = []
        for chunk in batch.chunks:
            row = len(ids)
            ids.extend(chunk.seq.token_ids[chunk.start : chunk.start + chunk.length])
            positions.extend(range(chunk.start, chunk.start + chunk.length))
            if chunk.samples:
                sampled_rows.append(row + chunk.length - 1)
                sampled.append(chunk)
        pos = torch.tensor(positions, dtype=torch.long)
        slot_mapping = self._slots_of(batch)
        prefill_tables: dict[str, torch.Tensor | int] = {}
        if self.block_table_decodes:
            decode_slots = decode_mask = None
            block_tables, context_lens = self._decode_tables(batch.decodes)
        else:
            decode_slots, decode_mask = self._decode_context(batch.decodes)
            block_tables = context_lens = None
        if self.block_table_prefills:
            prefills = []
            prefill_tables = self._prefill_tables(batch)
        else:
            prefills = self._prefill_slices(batch)
        meta = AttentionMetadata(
            slot_mapping=slot_mapping.to(self.device, non_blocking=True),
            num_decodes=len(batch.decodes),
            decode_slots=decode_slots,
            decode_mask=decode_mask,
            prefills=prefills,
            block_tables=block_tables,
            context_lens=context_lens,
            block_size=self.block_size,
            **prefill_tables,  # type: ignore[arg-type]
        )
        return StepInputs(
            input_ids=torch.tensor(ids, dtype=torch.long).to(self.device, non_blocking=True),
            positions=pos.to(self.device, non_blocking=True),
            meta=meta,
            logits_indices=torch.tensor(sampled_rows, dtype=torch.long).to(self.device, non_blocking=True),
            sampled_chunks=sampled,
        )

    def _slots_of(self, batch: Batch) -> torch.Tensor:
        """Cache slot of every token processed this step, `[T]`.

        Plain Python over the step's tokens: at decode sizes one list and one tensor cost less than
        the dozens of small torch calls a vectorized lookup makes.
        """
        size = self.block_size
        slots: list[int] = []
        for c in batch.chunks:
            table = c.seq.block_table
            slots.extend(table[p // size] * size + p % size for p in range(c.start, c.start + c.length))
        return torch.tensor(slots, dtype=torch.long)

    def _context_slots(self, block_table: list[int], length: int) -> torch.Tensor:
        table = torch.tensor(block_table, dtype=torch.long)
        offsets = torch.arange(self.block_size)
        return (table[:, None] * self.block_size + offsets[None, :]).view(-1)[:length]

    def _decode_context(
        self, decodes: list[ScheduledChunk]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if not decodes:
            return None, None
        lengths = torch.tensor([c.start + 1 for c in decodes])  # each decode sees every earlier token
        max_len = int(lengths.max())
        width = -(-max_len // self.block_size)
        tables = torch.zeros(len(decodes), width, dtype=torch.long)  # padding points at block 0, masked
        for i, c in enumerate(decodes):
            table = c.seq.block_table[:width]
            tables[i, : len(table)] = torch.tensor(table, dtype=torch.long)
        offsets = torch.arange(self.block_size)
        # slots: [B, width * block_size] -> [B, max_len]
        slots = (tables[:, :, None] * self.block_size + offsets).view(len(decodes), -1)[:, :max_len]
        slots = slots.contiguous().to(self.device, non_blocking=True)
        if bool((lengths == max_len).all()):
            return slots, None  # nothing padded: attention's unmasked path is the faster one
        mask = torch.arange(max_len)[None, :] < lengths[:, None]  # [B, L]
        return slots, mask[:, None, None, :].to(self.device, non_blocking=True)

    def _decode_tables(
        self, decodes: list[ScheduledChunk]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Block tables `[B, W]` (rows padded with block 0, never read) and context lengths `[B]`."""
        if not decodes:
            return None, None
        width = _table_width(max(len(c.seq.block_table) for c in decodes))
        tables = torch.tensor(
            [c.seq.block_table + [0] * (width - len(c.seq.block_table)) for c in decodes], dtype=torch.int32
        )
        lens = torch.tensor([c.start + 1 for c in decodes], dtype=torch.int32)
        return tables.to(self.device, non_blocking=True), lens.to(self.device, non_blocking=True)

    def _prefill_tables(self, batch: Batch) -> dict[str, torch.Tensor | int]:
        """AttentionMetadata's prefill_* fields: one row per chunk, every one on the device in a
        single copy (block tables padded with block 0, never read past a chunk's end). Each part
        starts at a multiple of 16 bytes and the tables' width is a multiple of 16, so every
        step's arguments fall in one Triton specialization (see `_table_width`)."""
        chunks = batch.prefills
        if not chunks:
            return {}
        n, width = len(chunks), _table_width(max(len(c.seq.block_table) for c in chunks))
        part = -(-n // 4) * 4  # int32 entries in a multiple of 16 bytes
        flat = torch.zeros(3 * part + n * width, dtype=torch.int32)  # starts, lengths, positions, tables
        tables = flat[3 * part :].view(n, width)
        row = len(batch.decodes)
        for i, c in enumerate(chunks):
            flat[i], flat[part + i], flat[2 * part + i] = row, c.length, c.start
            tables[i, : len(c.seq.block_table)] = torch.tensor(c.seq.block_table, dtype=torch.int32)
            row += c.length
        flat = flat.to(self.device, non_blocking=True)
        return {
            "prefill_q_starts": flat[:n],
            "prefill_q_lens": flat[part : part + n],
            "prefill_ctx_starts": flat[2 * part : 2 * part + n],
            "prefill_tables": flat[3 * part :].view(n, width),
            "prefill_max_len": max(c.length for c in chunks),
        }

    def _prefill_slices(self, batch: Batch) -> list[PrefillSlice]:
        slices = []
        row = len(batch.decodes)
        for c in batch.prefills:
            end = c.start + c.length
            if c.start == 0:
                context, mask = torch.empty(0, dtype=torch.long), None
            else:
                context = self._context_slots(c.seq.block_table, end)
                query_pos = torch.arange(c.start, end)
                mask = torch.arange(end)[None, :] <= query_pos[:, None]  # [n, L]
                mask = mask.to(self.device, non_blocking=True)
            slices.append(PrefillSlice(row, c.length, context.to(self.device, non_blocking=True), mask))
            row += c.length
        return slices


def _table_width(blocks: int) -> int:
    """Block-table width for a step whose longest table has `blocks` entries: a multiple of 16.

    Triton compiles a kernel once per class of its arguments (a pointer aligned to 16 bytes or
    not, an integer divisible by 16, equal to 1, or neither). A width that followed the batch
    would put a step of a new class through a fresh compile, half a second or more on a GPU, in
    the middle of serving; a padded width (and aligned parts) keeps every step in one class.
    """
    return max(16, -(-blocks // 16) * 16)


@torch.inference_mode()
def profile_activation_bytes(model: LlamaModel, num_tokens: int, num_sampled: int, block_size: int) -> int:
    """GPU memory one step of `num_tokens` prompt tokens needs beyond what is allocated now.

    The KV budget is what remains after the weights and this peak; sizing it from free memory
    alone would leave a full prefill step to run out of memory later.
    """
    device = next(model.parameters()).device
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    runner = ModelRunner(model, -(-num_tokens // block_size), block_size, cuda_graphs=False)
    meta = AttentionMetadata(
        slot_mapping=torch.arange(num_tokens, device=device),
        num_decodes=0,
        decode_slots=None,
        decode_mask=None,
        prefills=[PrefillSlice(0, num_tokens, torch.empty(0, dtype=torch.long, device=device), None)],
    )
    ids = torch.zeros(num_tokens, dtype=torch.long, device=device)
    rows = torch.arange(num_tokens - min(num_tokens, num_sampled), num_tokens, device=device)
    model(ids, torch.arange(num_tokens, device=device), runner.caches, meta, rows)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del runner
    torch.cuda.empty_cache()
    return peak
