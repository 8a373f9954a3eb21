"""Which sequences run in the next step and how many of their tokens: policy only, no I/O.

Continuous batching under `max_batch` running sequences and `max_step_tokens` tokens per step.
Running sequences go first, oldest first: one token each when decoding, a chunk of their prompt
when prefilling (chunked prefill: a long prompt never holds the others up for more than a step).
Waiting sequences are admitted in arrival order while a slot, token budget and KV blocks (above a
watermark) remain. When blocks run out mid-decode the newest running sequence is preempted: its
blocks are freed and it waits at the head of the queue to be recomputed, its output so far kept.

With chunk_policy "cost", a prompt chunk beside decoding rows is sized by what steps cost on this
machine (chunk_policy.py, from `cost`, the engine's table of its own step timings): the smallest
chunk that keeps the work per second within 5 % of the best, so the decoders' next token is not
held up by a chunk that gains nothing. Otherwise ("greedy", the default: measured no slower, and
it grows the decoding batch soonest), and in any step without decoders, a chunk is as many prompt
tokens as the step's budget allows.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .block_manager import BlockManager
from .chunk_policy import chunk_size
from .sequence import Sequence, Status
from .step_cost import StepCost


@dataclass
class ScheduledChunk:
    seq: Sequence
    start: int        # first token (position) to compute
    count: int        # tokens to compute, drafted ones included
    n_draft: int = 0  # of them, speculative tokens after the sequence's last one (not yet its own)
    reserved: int = -1  # draft slots taken at plan time (n_draft may shrink below it before the step runs)

    def __post_init__(self) -> None:
        if self.reserved < 0:
            self.reserved = self.n_draft

    def drop_drafts(self, keep: int) -> None:
        """Verify only the first `keep` drafts (a draft model's draft ends at a stop token, or where
        the grammar forbids a token, after the plan counted k): the step computes fewer rows, and
        the slots taken for the rest are given back with the rejected ones (Scheduler.accept_drafts)."""
        keep = max(0, min(keep, self.n_draft))
        self.count -= self.n_draft - keep
        self.n_draft = keep
        del self.seq.draft_ids[keep:]

    @property
    def samples(self) -> bool:
        """True when this chunk reaches the end of the sequence: its last logits give a new token
        (with drafts: the last 1 + n_draft rows verify them and give the token after)."""
        return self.start + self.count - self.n_draft == len(self.seq)

    @property
    def is_decode(self) -> bool:
        """One generated token fed back (not prompt, not recomputation), drafts aside."""
        return (self.count - self.n_draft == 1 and self.start == len(self.seq) - 1
                and self.start >= len(self.seq.prompt_ids))


class Scheduler:
    def __init__(self, blocks: BlockManager, max_batch: int = 1, max_step_tokens: int = 512,
                 cost: StepCost | None = None):
        """cost: step timings by tokens computed (bucketed), for sizing prompt chunks beside decoders;
        None: greedy chunks."""
        if max_batch < 1 or max_step_tokens < 1:
            raise ValueError("max_batch and max_step_tokens must be at least 1")
        self.blocks = blocks
        self.cost = cost
        self.max_batch = max_batch
        self.max_step_tokens = max_step_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> list[ScheduledChunk]:
        budget = self.max_step_tokens
        plan: list[ScheduledChunk] = []
        # Rows the step holds whatever its prompt chunks: the decoders' tokens and drafts. Beside them
        # the step's prompt tokens, all chunks together, are sized once (_chunk) when the first is planned.
        self._decoding = sum(1 + len(s.draft_ids) for s in self.running if s.num_pending == 1)
        self._prompt_room: int | None = None
        for seq in list(self.running):  # oldest first
            if budget == 0:
                break
            if seq not in self.running:  # preempted below to make room for an older one
                continue
            count = self._chunk(seq, budget)
            if count == 0:
                continue  # a prompt, and this step's prompt tokens are spoken for
            n_draft = len(seq.draft_ids) if count == seq.num_pending == 1 else 0
            n_draft = min(n_draft, budget - count)
            # Slots past the sequence's tokens this step writes: a decode token's (and its drafts'); a
            # prompt chunk's tokens already have blocks (allocate gave the whole prompt its blocks).
            # Asking for count past len(seq) instead made a prompt longer than max_step_tokens, in a
            # cache just big enough for it, preempt itself after its first chunk and start again for
            # ever (a 1,024-token prompt at max_step_tokens 512 and n_ctx 1,088 never finished).
            n_new = seq.num_computed + count + n_draft - len(seq) + 1
            if not self._make_room(seq, n_new):
                continue  # seq itself was preempted
            self.blocks.append_slots(seq, n_new)
            plan.append(ScheduledChunk(seq, seq.num_computed, count + n_draft, n_draft))
            budget -= count + n_draft
        while self.waiting and budget > 0 and len(self.running) < self.max_batch and self._prompt_room != 0:
            seq = self.waiting[0]
            if not self.blocks.can_allocate(seq):
                break  # FIFO: nobody overtakes the head of the queue
            self.waiting.popleft()
            self.blocks.allocate(seq)
            seq.status = Status.RUNNING
            self.running.append(seq)
            count = self._chunk(seq, budget)
            plan.append(ScheduledChunk(seq, seq.num_computed, count))
            budget -= count
        return plan

    def _chunk(self, seq: Sequence, budget: int) -> int:
        """Tokens of seq to compute this step: a decoder's one, or a prompt chunk. Beside decoders, the
        step's prompt tokens (every chunk's together) are what chunk_policy.py finds worth their wait."""
        count = min(seq.num_pending, budget)
        if seq.num_pending == 1 or self.cost is None or not self._decoding:
            return count
        if self._prompt_room is None:
            self._prompt_room = chunk_size(self.cost, self._decoding, budget)
        count = min(count, self._prompt_room)
        self._prompt_room -= count
        return count

    def _make_room(self, seq: Sequence, count: int) -> bool:
        """Preempt newer sequences until seq's next `count` tokens have blocks; False if seq itself
        had to go (it was the newest)."""
        while not self.blocks.can_append(seq, count):
            victim = max(self.running, key=lambda s: s.arrival)
            self.preempt(victim)
            if victim is seq:
                return False
        return True

    def preempt(self, seq: Sequence) -> None:
        seq.draft_ids = []
        self.blocks.free(seq)
        self.running.remove(seq)
        seq.status = Status.WAITING
        seq.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Remove a sequence for good (done or aborted) and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        if seq.block_table:
            self.blocks.free(seq)
        seq.status = Status.FINISHED
        seq.finish_reason = reason

    def after_step(self, plan: list[ScheduledChunk]) -> None:
        """Account for computed tokens (call before appending sampled tokens). Drafted tokens don't
        count until they are accepted (accept_drafts): the prefix cache never names them."""
        for chunk in plan:
            chunk.seq.num_computed = chunk.start + chunk.count - chunk.n_draft
            self.blocks.register_computed(chunk.seq)

    def accept_drafts(self, seq: Sequence, n_accepted: int) -> None:
        """After verification: the KV of the accepted drafts is valid (they are now the sequence's
        own tokens); the rejected ones' slots are given back."""
        seq.num_computed += n_accepted
        seq.draft_ids = []
        self.blocks.register_computed(seq)
        self.blocks.trim(seq)
