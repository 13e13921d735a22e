"""Paged KV blocks: which physical blocks each sequence owns, and which hold a known prefix.

The tensors live in the model runner; this module only hands out block numbers.

Prefix caching: once a block is full and its K/V computed, it is registered under a hash of its
tokens chained with the previous block's hash, so the hash names the whole prefix up to it. A
later sequence whose prompt starts with the same tokens — a shared system prompt, the next turn of
a chat, a retried request — takes those blocks instead of computing them again. A block whose last
owner finishes keeps its contents and its hash until the block is handed out again; free blocks
are reused least recently freed first, so a popular prefix survives.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence as Seq

from model_runtime.sequence import Sequence


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


def chain_hash(previous: int | None, tokens: Seq[int]) -> int:
    return hash((previous, tuple(tokens)))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        # Free blocks in the order they were freed (values unused): the oldest is reused first.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._ref_counts = [0] * num_blocks
        self._hash_of: dict[int, int] = {}  # block -> prefix hash, for full computed blocks
        self._block_of: dict[int, int] = {}  # prefix hash -> block
        self._tokens_of: dict[int, tuple[int, ...]] = {}  # block -> its tokens, to rule out collisions
        self.prefix_hit_tokens = 0
        self.prefix_queried_tokens = 0

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        """Blocks `seq` must still get for its first `num_tokens` tokens to have slots."""
        return max(0, blocks_for(num_tokens, self.block_size) - len(seq.block_table))

    def can_allocate(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_needed(seq, num_tokens) <= len(self._free)

    def allocate(self, seq: Sequence, num_tokens: int) -> None:
        """Grows `seq`'s block table to cover `num_tokens` tokens. Call `can_allocate` first."""
        needed = self.blocks_needed(seq, num_tokens)
        if needed > len(self._free):
            raise MemoryError("KV cache exhausted; the scheduler should have preempted")
        for _ in range(needed):
            block, _ = self._free.popitem(last=False)
            self._forget(block)
            self._ref_counts[block] = 1
            seq.block_table.append(block)

    def free(self, seq: Sequence) -> None:
        for block in reversed(seq.block_table):
            self._ref_counts[block] -= 1
            if self._ref_counts[block] == 0:
                self._free[block] = None
        seq.block_table = []  # a new list, never the old one emptied: see decode_graphs.HostInputs
        seq.num_computed_tokens = 0
        seq.block_hashes.clear()

    # -- prefix caching -------------------------------------------------------------------------

    def match_prefix(self, seq: Sequence) -> int:
        """Gives a sequence with no blocks the cached blocks of its longest known prefix.

        Returns the number of tokens whose K/V are now in place (a multiple of the block size).
        The last token is always left to compute: its logits give the first sampled token.
        """
        if not self.enable_prefix_caching or seq.block_table:
            return 0
        size = self.block_size
        tokens = seq.token_ids
        previous: int | None = None
        for start in range(0, seq.num_tokens - 1 - size + 1, size):
            chunk = tokens[start : start + size]
            h = chain_hash(previous, chunk)
            block = self._block_of.get(h)
            if block is None or self._tokens_of[block] != tuple(chunk):
                break
            if self._ref_counts[block] == 0:
                del self._free[block]
            self._ref_counts[block] += 1
            seq.block_table.append(block)
            seq.block_hashes.append(h)
            previous = h
        seq.num_computed_tokens = len(seq.block_table) * size
        return seq.num_computed_tokens

    def record_lookup(self, num_tokens: int, hit_tokens: int) -> None:
        """Counts one admitted sequence's prefix lookup (a lookup retried while blocked counts once)."""
        self.prefix_queried_tokens += num_tokens
        self.prefix_hit_tokens += hit_tokens

    def register_full_blocks(self, seq: Sequence) -> None:
        """Records the hashes of `seq`'s blocks that have become full and computed."""
        if not self.enable_prefix_caching:
            return
        size = self.block_size
        full = min(seq.num_computed_tokens // size, len(seq.block_table))
        while len(seq.block_hashes) < full:
            i = len(seq.block_hashes)
            chunk = seq.token_ids[i * size : (i + 1) * size]
            previous = seq.block_hashes[-1] if seq.block_hashes else None
            h = chain_hash(previous, chunk)
            seq.block_hashes.append(h)
            block = seq.block_table[i]
            if h not in self._block_of and block not in self._hash_of:
                self._block_of[h] = block
                self._hash_of[block] = h
                self._tokens_of[block] = tuple(chunk)

    def _forget(self, block: int) -> None:
        """A free block is about to be overwritten: it no longer holds its prefix."""
        h = self._hash_of.pop(block, None)
        if h is not None:
            del self._block_of[h]
            del self._tokens_of[block]
