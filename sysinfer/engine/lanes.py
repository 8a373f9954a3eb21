"""--numa replicate: one lane per NUMA node, each an LLMEngine over its own whole copy of the model
(weights, KV arena, block manager, scheduler, thread pool, all on that node). The server's loop
drives them as one engine: `Lanes` implements core.EngineCore, as LLMEngine does, each request's
calls handed to its lane's LLMEngine.

- A new request goes to the least loaded lane (fewest sequences, then fewest KV blocks in use, then
  the lowest index) and stays there: its KV blocks live in that lane's arena.
- One engine step plans every lane, runs the lanes' native steps at the same time (each is its own
  native call on its own pinned threads and releases the GIL: lane 0 in the calling thread, the
  others in a small thread pool), then postprocesses each lane. A lane whose step fails ends only
  that lane's requests.
- max_batch, the KV cache and the prefix cache are per lane (a shared system prompt is computed once
  per lane that sees it).
"""

from __future__ import annotations

import dataclasses
from collections import ChainMap
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..config import DRAFT_WITH_REPLICATE, EngineConfig
from . import core
from .llm_engine import EngineStats, Event, LLMEngine
from .request_state import Delta
from .sampling import SamplingParams
from .scheduler import ScheduledChunk
from .sequence import Sequence

# Counters that add up over lanes; the others take the maximum (steps run in lockstep).
_MAX_FIELDS = {"steps", "last_step_seconds", "step_seconds_total"}


@dataclass
class LanePlan:
    """One lane's share of a step."""
    lane: int
    chunks: list[ScheduledChunk]


class _LanesView:
    """The lanes' schedulers or block managers read as one, for counts (running, waiting, free...)."""

    def __init__(self, parts: list):
        self._parts = parts

    @property
    def waiting(self) -> list[Sequence]:
        return [s for p in self._parts for s in p.waiting]

    @property
    def running(self) -> list[Sequence]:
        return [s for p in self._parts for s in p.running]

    _SUMMED = frozenset({"num_used", "num_free", "num_cached", "num_blocks", "watermark_blocks",
                         "prefix_hit_tokens", "preemptions"})

    def __getattr__(self, name: str):
        """Counts add up over lanes; anything else (a block size, a method) has no one meaning here:
        ask a lane (Lanes.lanes[i])."""
        if name in self._SUMMED:
            return sum(getattr(p, name) for p in self._parts)
        raise AttributeError(f"{name!r} is per lane: use Lanes.lanes[i]")


def make_core(model, tokenizer, config: EngineConfig | None = None, *, draft_model=None,
              **fields) -> core.EngineCore:
    """The engine core for a model: Lanes over a ReplicatedModel's replicas, else one LLMEngine.
    config: passed whole (fields: some of it replaced, for tests)."""
    config = EngineConfig.with_fields(config, fields)
    replicas = getattr(model, "replicas", None)
    if not replicas:
        return LLMEngine(model, tokenizer, config, draft_model=draft_model)
    if draft_model is not None:
        raise ValueError(DRAFT_WITH_REPLICATE)
    return Lanes(replicas, tokenizer, config)


class Lanes:
    """core.EngineCore over one LLMEngine per replica (see the module's docstring)."""

    def __init__(self, models: list, tokenizer, config: EngineConfig | None = None, **fields):
        self.config = config = EngineConfig.with_fields(config, fields)
        self.lanes = [LLMEngine(m, tokenizer, config) for m in models]
        self.model = models[0]
        self.by_id = ChainMap(*(lane.by_id for lane in self.lanes))  # a live view of every lane's requests
        self.scheduler = _LanesView([lane.scheduler for lane in self.lanes])
        self.blocks = _LanesView([lane.blocks for lane in self.lanes])
        self._lane_of: dict[str, int] = {}
        # Threads that run lanes 1..N-1's native steps while the caller runs lane 0's.
        self._pool = ThreadPoolExecutor(len(self.lanes) - 1, "sysinfer-lane") if len(self.lanes) > 1 else None

    # ---- requests ----
    @property
    def max_total_tokens(self) -> int:
        return min(lane.max_total_tokens for lane in self.lanes)

    def check_prompt(self, n_prompt: int, max_tokens: int) -> None:
        for lane in self.lanes:  # the lanes are alike; a request must fit whichever lane it lands on
            lane.check_prompt(n_prompt, max_tokens)

    def least_loaded(self) -> int:
        load = [(len(lane.by_id), lane.blocks.num_used, i) for i, lane in enumerate(self.lanes)]
        return min(load)[2]

    def add_request(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None) -> Sequence:
        if request_id is not None and request_id in self.by_id:
            raise ValueError(f"request id {request_id!r} is already in use")
        i = self.least_loaded()
        seq = self.lanes[i].add_request(prompt_ids, params, request_id)
        self._lane_of[seq.request_id] = i
        return seq

    def lane_of(self, seq: Sequence) -> LLMEngine:
        return self.lanes[self._lane_of[seq.request_id]]

    def has_work(self) -> bool:
        return any(lane.has_work() for lane in self.lanes)

    def finish(self, seq: Sequence, reason: str, token_ids: list[int] | None = None, text: str = "",
               error: str | None = None, logprobs=None) -> Delta:
        delta = self.lane_of(seq).finish(seq, reason, token_ids, text, error, logprobs)
        self._lane_of.pop(seq.request_id, None)
        return delta

    def fail(self, seq: Sequence, message: str) -> Delta:
        return self.finish(seq, "error", error=message)

    # ---- the step ----
    def plan(self) -> list[LanePlan]:
        """Every lane's plan; lanes with nothing to run are left out (empty: nothing runs)."""
        plans = [LanePlan(i, lane.plan()) for i, lane in enumerate(self.lanes)]
        return [p for p in plans if p.chunks]

    def execute(self, plan: list[LanePlan]) -> list[np.ndarray | Exception]:
        """The lanes' native steps at once; per lane its logits, or the exception its step raised."""
        def run(p: LanePlan) -> np.ndarray | Exception:
            try:
                return self.lanes[p.lane].execute(p.chunks)
            except Exception as e:  # noqa: BLE001 - that lane's requests fail (postprocess), the others go on
                return e

        others = [self._pool.submit(run, p) for p in plan[1:]] if self._pool else []
        first = [run(plan[0])] if plan else []
        return first + [f.result() for f in others]

    def postprocess(self, plan: list[LanePlan], logits: list[np.ndarray | Exception]) -> list[Event]:
        """Per lane: its logits postprocessed, or its requests failed with the exception its step raised."""
        events: list[Event] = []
        for p, result in zip(plan, logits):
            lane = self.lanes[p.lane]
            if isinstance(result, Exception):
                events += lane.fail_step(p.chunks, result)
            else:
                events += lane.postprocess(p.chunks, result)
        self._forget_finished(events)
        return events

    def fail_step(self, plan: list[LanePlan], error: Exception) -> list[Event]:
        events = [e for p in plan for e in self.lanes[p.lane].fail_step(p.chunks, error)]
        self._forget_finished(events)
        return events

    def _forget_finished(self, events: list[Event]) -> None:
        for seq, _ in events:
            if seq.finished:
                self._lane_of.pop(seq.request_id, None)

    def step(self) -> list[Event]:
        """plan -> run -> postprocess, all lanes, in this thread (tests; the server uses AsyncEngine)."""
        plan = self.plan()
        return self.postprocess(plan, self.execute(plan)) if plan else []

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[Delta]:
        return core.generate(self, prompt_ids, params)

    # ---- numbers ----
    @property
    def stats(self) -> EngineStats:
        return self._sum([lane.stats for lane in self.lanes])

    def snapshot(self) -> EngineStats:
        return self._sum(self.lane_snapshots())

    def lane_snapshots(self) -> list[EngineStats]:
        return [dataclasses.replace(lane.snapshot()) for lane in self.lanes]

    @staticmethod
    def _sum(parts: list[EngineStats]) -> EngineStats:
        out = EngineStats()
        for f in dataclasses.fields(EngineStats):
            values = [getattr(p, f.name) for p in parts]
            setattr(out, f.name, max(values) if f.name in _MAX_FIELDS else sum(values))
        return out
