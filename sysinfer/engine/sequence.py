"""One request's state as the scheduler and the engine see it."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from .sampling import SamplingParams

if TYPE_CHECKING:
    from .request_state import RequestState

_arrival = itertools.count()


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    output_ids: list[int] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)  # KV block ids, in position order
    draft_ids: list[int] = field(default_factory=list)    # speculative tokens to verify in the next step
    num_computed: int = 0       # leading tokens whose K/V are in the cache
    cached_prompt_tokens: int = 0  # of the prompt, found in the prefix cache at admission
    status: Status = Status.WAITING
    finish_reason: str | None = None
    preemptions: int = 0
    drafted: int = 0            # speculative tokens verified for this request
    draft_accepted: int = 0     # of them, confirmed by the model
    hashed: tuple[int, int | None] = (0, None)  # (blocks named in the prefix cache, last chain hash)
    block_hashes: list[int] = field(default_factory=list)  # chain hashes of the first full blocks (block_manager)
    arrival: int = field(default_factory=lambda: next(_arrival))
    choice: int = 0                # which of its request's n choices this sequence is
    state: "RequestState | None" = None  # the engine's per-request sampler, detokenizer, stop matcher

    _all: list[int] = field(default_factory=list, init=False, repr=False)  # prompt + output, kept appended

    @property
    def tokens(self) -> list[int]:
        """prompt_ids + output_ids (read-only for callers), appended to as the output grows instead of
        built again each time it is read (the model runner reads it every step)."""
        done = len(self._all) - len(self.prompt_ids)
        if done < 0 or done > len(self.output_ids):  # first read (or an output cut short): build it
            self._all[:] = self.prompt_ids + self.output_ids
        elif done < len(self.output_ids):
            self._all += self.output_ids[done:]
        return self._all

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_pending(self) -> int:
        """Tokens still to run through the model before the next token can be sampled."""
        return len(self) - self.num_computed

    @property
    def finished(self) -> bool:
        return self.status == Status.FINISHED
