"""The engine core's one interface: what the server's loop (async_engine.py), `sysinfer generate`
and `sysinfer bench` call, whether the core is one LLMEngine (one model, one node or a tensor-parallel
split) or Lanes (--numa replicate: one LLMEngine per node).

Both classes implement EngineCore; tests/unit/test_engine_core.py holds every method's signature in
both equal to the one here, so the two cannot drift apart again (Lanes once lacked check_prompt and
finish's logprobs, and every replicated request with n >= 2 answered 500).

The three step phases are opaque to callers: plan() returns what execute() and postprocess() take
(LLMEngine: its chunks; Lanes: per-lane plans), and an empty plan means nothing fits right now.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .llm_engine import EngineStats, Event
    from .request_state import Delta
    from .sampling import SamplingParams
    from .sequence import Sequence


@runtime_checkable
class EngineCore(Protocol):
    model: Any                      # the loaded model (for Lanes: lane 0's replica)
    by_id: Any                      # request id -> Sequence, every unfinished request
    scheduler: Any                  # .waiting / .running (for Lanes: all lanes' together)
    blocks: Any                     # KV block counts (for Lanes: summed over lanes)
    stats: EngineStats              # counters (for Lanes: summed over lanes)

    # ---- requests ----
    @property
    def max_total_tokens(self) -> int:
        """Prompt + reply tokens one request may have."""

    def check_prompt(self, n_prompt: int, max_tokens: int) -> None:
        """Raises ContextLengthError if such a request can never run."""

    def add_request(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None) -> Sequence:
        """Queue a request (raises ContextLengthError, or ValueError for a reused id)."""

    def has_work(self) -> bool: ...

    def finish(self, seq: Sequence, reason: str, token_ids: list[int] | None = None, text: str = "",
               error: str | None = None, logprobs=None) -> Delta:
        """Remove a request for good (its blocks freed); returns its last delta."""

    def fail(self, seq: Sequence, message: str) -> Delta: ...

    # ---- the step, in three phases ----
    def plan(self) -> Any:
        """Phase 1, on the caller's thread: what runs. Falsy: nothing to run."""

    def execute(self, plan: Any) -> Any:
        """Phase 2, GIL released in the native call: the logits of the plan."""

    def postprocess(self, plan: Any, logits: Any) -> list[Event]:
        """Phase 3: sample, detokenize, stop checks; the deltas in order."""

    def fail_step(self, plan: Any, error: Exception) -> list[Event]:
        """execute() raised: the plan's requests end with an error."""

    def step(self) -> list[Event]:
        """The three phases in this thread."""

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[Delta]:
        """One request run to its end in this thread; its deltas."""

    # ---- numbers ----
    def snapshot(self) -> EngineStats: ...

    def lane_snapshots(self) -> list[EngineStats]:
        """One per lane (one node: a list of one)."""


def generate(core: EngineCore, prompt_ids: list[int], params: SamplingParams) -> Iterator[Delta]:
    """The synchronous driver both cores share: one request run to its end here (with whatever else
    is queued); yields its deltas."""
    seq = core.add_request(prompt_ids, params)
    try:
        while not seq.finished:
            events = core.step()
            if not events and not core.scheduler.running:
                raise RuntimeError(f"request {seq.request_id} can't be scheduled")  # a bug, never a hang
            for s, delta in events:
                if s is seq:
                    yield delta
    finally:
        if not seq.finished:
            core.finish(seq, "abort")
