"""KV block bookkeeping: integers only (block ids, reference counts, a free list, prefix hashes).

Prefix caching: a full block is named by a hash chained over every token before it and its own
tokens, so equal prefixes give equal hashes whatever follows. A new sequence reuses the blocks of
the longest cached prefix of its prompt (shared read-only, ref-counted) and computes only the rest.
Freed blocks keep their hash in an LRU list until a new allocation needs them, so a system prompt
that every request repeats stays computed. Every hit is checked against the block's stored tokens.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from .sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_cache: bool = True, watermark: float = 0.01):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("the KV cache needs at least one block of at least one token")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_cache = enable_prefix_cache
        # At least one block when asked for any (watermark 0: the whole cache is usable, as at max_batch 1).
        self.watermark_blocks = max(1, int(watermark * num_blocks)) if watermark > 0 and num_blocks > 4 else 0
        self.ref_count = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks
        self.block_tokens: list[tuple[int, ...] | None] = [None] * num_blocks
        self.hash_to_block: dict[int, int] = {}
        self.free_blocks: deque[int] = deque(range(num_blocks))  # never hashed, or forgotten
        self.cached_free: OrderedDict[int, None] = OrderedDict()  # ref 0 but hashed: LRU order
        self.prefix_hit_tokens = 0

    # ---- counts ----
    @property
    def num_free(self) -> int:
        return len(self.free_blocks) + len(self.cached_free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    @property
    def num_cached(self) -> int:
        return len(self.cached_free)

    def blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    # ---- hashing ----
    @staticmethod
    def chain_hash(previous: int | None, tokens: tuple[int, ...]) -> int:
        return hash((previous, tokens))

    def _cached_prefix(self, seq: Sequence) -> list[int]:
        """Blocks holding the longest cached prefix of seq's tokens (at least one token left to run)."""
        if not self.enable_prefix_cache:
            return []
        tokens, bs, hits = seq.tokens, self.block_size, []
        for i, h in enumerate(self._chain(seq, tokens, (len(tokens) - 1) // bs)):
            block = self.hash_to_block.get(h)
            if block is None or self.block_tokens[block] != tuple(tokens[i * bs : (i + 1) * bs]):  # miss, or a collision
                break
            hits.append(block)
        return hits

    def _chain(self, seq: Sequence, tokens: list[int], n_blocks: int) -> list[int]:
        """The chain hashes of seq's first n_blocks full blocks. Kept on the sequence and extended as
        it grows (its tokens only ever grow), so admission hashes its prompt once: can_allocate and
        allocate, and a sequence that waits step after step, reuse the chain."""
        chain, bs = seq.block_hashes, self.block_size
        for i in range(len(chain), n_blocks):
            chain.append(self.chain_hash(chain[-1] if chain else None, tuple(tokens[i * bs : (i + 1) * bs])))
        return chain[:n_blocks]

    # ---- check / act ----
    def can_allocate(self, seq: Sequence) -> bool:
        hits = self._cached_prefix(seq)
        reusable_free = sum(1 for b in hits if self.ref_count[b] == 0)  # hits taken out of the free pool
        needed = self.blocks_for(len(seq)) - len(hits)
        return self.num_free - reusable_free - needed >= self.watermark_blocks

    def allocate(self, seq: Sequence) -> None:
        """Blocks for all of seq's current tokens; cached prefix blocks are shared."""
        assert not seq.block_table, "sequence already has blocks"
        hits = self._cached_prefix(seq)
        for b in hits:
            if self.ref_count[b] == 0:
                self.cached_free.pop(b, None)
            self.ref_count[b] += 1
        seq.block_table = list(hits)
        for _ in range(self.blocks_for(len(seq)) - len(hits)):
            seq.block_table.append(self._take_block())
        seq.num_computed = len(hits) * self.block_size
        hit_tokens = min(seq.num_computed, len(seq.prompt_ids))
        seq.cached_prompt_tokens = hit_tokens
        self.prefix_hit_tokens += hit_tokens

    def can_append(self, seq: Sequence, n_new: int = 1) -> bool:
        """Room for the KV of tokens up to len(seq) + n_new - 1 (those about to be computed)."""
        return self.blocks_for(len(seq) + n_new - 1) - len(seq.block_table) <= self.num_free

    def append_slots(self, seq: Sequence, n_new: int = 1) -> None:
        while len(seq.block_table) < self.blocks_for(len(seq) + n_new - 1):
            seq.block_table.append(self._take_block())

    def trim(self, seq: Sequence) -> None:
        """Gives back blocks past those seq's tokens need (slots taken for rejected draft tokens)."""
        keep = self.blocks_for(len(seq))
        while len(seq.block_table) > keep:
            b = seq.block_table.pop()
            self.ref_count[b] -= 1
            assert self.ref_count[b] == 0 and self.block_hash[b] is None, f"block {b} trimmed while shared or named"
            self.free_blocks.append(b)

    def free(self, seq: Sequence) -> None:
        for b in reversed(seq.block_table):  # reversed: a sequence's tail is evicted first (LRU)
            self.ref_count[b] -= 1
            assert self.ref_count[b] >= 0, f"block {b} freed twice"
            if self.ref_count[b] == 0:
                if self.block_hash[b] is not None:
                    self.cached_free[b] = None
                else:
                    self.free_blocks.append(b)
        seq.block_table = []
        seq.num_computed = 0
        seq.hashed = (0, None)

    def register_computed(self, seq: Sequence) -> None:
        """Hash the blocks that seq has completely computed, so later prompts can reuse them."""
        if not self.enable_prefix_cache:
            return
        bs, tokens = self.block_size, seq.tokens
        start, h = seq.hashed
        for i in range(start, seq.num_computed // bs):
            block = seq.block_table[i]
            chunk = tuple(tokens[i * bs : (i + 1) * bs])
            h = self.chain_hash(h, chunk)
            if self.block_hash[block] is not None:
                continue  # already named (a shared prefix block, or done in an earlier step)
            if h in self.hash_to_block:
                continue  # the same content lives in another block already
            self.block_hash[block], self.block_tokens[block] = h, chunk
            self.hash_to_block[h] = block
        seq.hashed = (max(start, seq.num_computed // bs), h)

    def _take_block(self) -> int:
        if self.free_blocks:
            b = self.free_blocks.popleft()
        elif self.cached_free:
            b, _ = self.cached_free.popitem(last=False)  # least recently freed
            del self.hash_to_block[self.block_hash[b]]
            self.block_hash[b] = self.block_tokens[b] = None
        else:
            raise RuntimeError("no free KV block (callers must check first)")
        assert self.ref_count[b] == 0
        self.ref_count[b] = 1
        return b
