"""The engine: one `step()` = schedule, run the native step, postprocess. Synchronous and policy-only.

Every way of generating goes through it: the server's anyio loop (async_engine.py) runs the same
three phases with the native step in a worker thread; `sysinfer generate` and `sysinfer bench` call
`step()` directly (no event loop). Failures are contained: one request's failed sampling ends that
request, a failed native step ends the requests in that step, and the engine goes on.
"""

from __future__ import annotations

import itertools
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..config import DRAFT_NEEDS_SPECULATION, EngineConfig
from . import core
from .block_manager import BlockManager
from .draft_model import DraftModel
from .errors import ContextLengthError
from .model_runner import ModelRunner, plan_parts
from .prompt_lookup import K_MAX
from .request_state import Delta, RequestState, Usage
from .sampling import SamplingError, SamplingParams
from .scheduler import ScheduledChunk, Scheduler
from .sequence import Sequence
from .spec_policy import DraftPolicy
from .step_cost import StepCost

log = logging.getLogger("sysinfer.engine")
_ids = itertools.count()
Event = tuple[Sequence, Delta]  # a delta for one request, in the order they happened


@dataclass
class EngineStats:
    running: int = 0
    waiting: int = 0
    kv_blocks_used: int = 0
    kv_blocks_free: int = 0
    kv_blocks_cached: int = 0
    prefix_hit_tokens: int = 0
    steps: int = 0
    tokens_generated: int = 0
    prompt_tokens_computed: int = 0     # tokens run as prefill (prompts, and recomputation after preemption)
    preemptions: int = 0
    last_step_seconds: float = 0.0
    step_seconds_total: float = 0.0
    draft_tokens: int = 0               # speculative tokens verified
    accepted_draft_tokens: int = 0      # of them, accepted
    draft_steps: int = 0                # sequence-steps that verified drafts
    draft_kv_blocks_used: int = 0       # the draft model's cache (--draft-model)
    draft_kv_blocks_free: int = 0
    draft_model_seconds: float = 0.0    # in the draft model's steps (part of step_seconds_total)


class LLMEngine:
    """One model's engine core (core.EngineCore): one node, or a tensor-parallel split across nodes."""

    def __init__(self, model, tokenizer, config: EngineConfig | None = None, *, draft_model=None, clock=time.perf_counter,
                 **fields):
        """config: the engine's settings, passed whole (fields: some of them replaced, for tests);
        clock: what times the native steps for the drafting policy (tests give a fake one)."""
        self.config = config = EngineConfig.with_fields(config, fields)
        max_batch, max_step_tokens, speculative = config.max_batch, config.max_step_tokens, config.speculative
        if max_batch > model.max_out_rows:
            raise ValueError(f"max_batch {max_batch} exceeds the model's logits rows ({model.max_out_rows})")
        self.model, self.tokenizer = model, tokenizer
        # The watermark keeps a little room so a newly admitted sequence isn't preempted at once;
        # with one sequence at a time there is nobody to preempt, and the whole cache is usable.
        watermark = 0.01 if max_batch > 1 else 0.0
        self.blocks = BlockManager(model.n_kv_blocks, model.block_size, config.enable_prefix_cache, watermark)
        # Every step's time by the tokens it computes: sizes prompt chunks beside decoders (chunk_policy.py).
        self.step_cost = StepCost(bucketed=True) if config.chunk_policy == "cost" else None
        self.scheduler = Scheduler(self.blocks, max_batch, min(max_step_tokens or model.max_step_tokens,
                                                                model.max_step_tokens), self.step_cost)
        self.runner = ModelRunner(model)
        # Drafted tokens per sequence and step: the logits rows (1 + k per sequence) must fit the model's.
        self.draft_limit = min(K_MAX, model.max_out_rows // max_batch - 1) if speculative else 0
        if draft_model is not None and not self.draft_limit:
            raise ValueError(f"{DRAFT_NEEDS_SPECULATION} on (and logits rows for its drafts)")
        # Whether drafts pay for their rows, from this engine's own step timings (spec_policy.py).
        self.policy, self.clock = DraftPolicy(policy=config.draft_policy), clock
        # Drafts from a small model of the same vocabulary (draft_model.py), else from prompt lookup.
        self.drafter = (DraftModel(draft_model, max_batch, config.lookup_first, self.policy, clock)
                        if draft_model is not None else None)
        self.by_id: dict[str, Sequence] = {}
        self.stats = EngineStats()
        self._mask_thread: ThreadPoolExecutor | None = None  # grammar masks, beside the native step

    # ---- requests ----
    @property
    def max_total_tokens(self) -> int:
        """Prompt + reply tokens one request may have: the context, and what the KV cache can hold."""
        capacity = (self.blocks.num_blocks - self.blocks.watermark_blocks) * self.blocks.block_size
        return min(self.model.n_ctx, capacity)

    def check_prompt(self, n_prompt: int, max_tokens: int) -> None:
        if n_prompt < 1:
            raise ContextLengthError("the prompt is empty")
        total = n_prompt + max_tokens
        if total > self.model.n_ctx:
            raise ContextLengthError(
                f"this model's context is {self.model.n_ctx} tokens; the prompt has {n_prompt} and max_tokens asks "
                f"for {max_tokens} more ({total} in all)")
        if total > self.max_total_tokens:
            raise ContextLengthError(f"{total} tokens exceed the KV cache ({self.max_total_tokens} tokens)")

    def add_request(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None) -> Sequence:
        """Queue a request (raises ContextLengthError, or ValueError for a reused id)."""
        self.check_prompt(len(prompt_ids), params.max_tokens)
        request_id = request_id or f"req-{next(_ids)}"
        if request_id in self.by_id:
            raise ValueError(f"request id {request_id!r} is already in use")
        seq = Sequence(request_id, list(prompt_ids), params)
        seq.state = RequestState(self.tokenizer, prompt_ids, params,
                                 speculative=self.draft_limit > 0 and (self.drafter is None or self.drafter.lookup_first),
                                 lookup_history=self.policy.lookup_history)
        self.by_id[request_id] = seq
        self.scheduler.add(seq)
        return seq

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def finish(self, seq: Sequence, reason: str, token_ids: list[int] | None = None, text: str = "",
               error: str | None = None, logprobs=None) -> Delta:
        """Remove a request for good (blocks freed); returns its last delta."""
        self.scheduler.finish(seq, reason)
        if self.drafter is not None:
            self.drafter.release(seq)
        self.by_id.pop(seq.request_id, None)
        state = seq.state
        usage = Usage(len(seq.prompt_ids), len(seq.output_ids), seq.cached_prompt_tokens,
                      seq.draft_accepted, seq.drafted - seq.draft_accepted, state.reasoning_tokens if state else 0)
        reasoning = state.take_reasoning() if state is not None and reason in ("stop", "length") else ""
        return Delta(text, token_ids or [], reason, usage, error, logprobs, reasoning=reasoning)

    # ---- the step, in three phases ----
    def plan(self) -> list[ScheduledChunk]:
        """Phase 1 (policy): which sequences run and how many of their tokens. Empty: nothing fits."""
        if self.draft_limit:
            self._draft()
        return self.scheduler.schedule()

    def _draft(self) -> None:
        """Speculative tokens for each decoding sequence, never past its max_tokens or the context,
        and only as many as the policy finds worth their rows."""
        decoding = [seq for seq in self.scheduler.running if seq.num_pending == 1]
        self.policy.begin(len(decoding))
        for seq in decoding:
            room = min(seq.params.max_tokens - len(seq.output_ids), self.model.n_ctx - len(seq)) - 1
            limit = min(self.draft_limit, room)
            # A draft model's tokens come in execute(), off the event loop: here only their count.
            seq.draft_ids = (self.drafter.reserve(seq, limit) if self.drafter
                             else seq.state.draft(limit, self.policy.decide))

    def execute(self, plan: list[ScheduledChunk]) -> np.ndarray:
        """Phase 2 (arithmetic, GIL released): logits [rows that sample, n_vocab], in plan order.
        The grammar masks of the constrained rows are computed meanwhile, in the mask thread."""
        start = time.perf_counter()
        if self.drafter is not None:  # the draft model's calls, before the target's one and the masks
            self.drafter.propose(plan)  # (which are computed for the drafts it settles on)
        masks = self._masks_ahead(plan)
        try:
            inputs = self.runner.build(plan_parts(plan))
            t0 = self.clock()
            logits = self.runner.run(inputs)
            seconds = self.clock() - t0
            if all(c.is_decode for c in plan):  # what a step of this many decode rows costs
                self.policy.observe(len(inputs.token_ids), seconds)
            if self.step_cost is not None:
                self.step_cost.observe(len(inputs.token_ids), seconds)
        finally:
            if masks is not None:
                masks.result()
        self.stats.last_step_seconds = time.perf_counter() - start
        self.stats.step_seconds_total += self.stats.last_step_seconds
        return logits

    def _masks_ahead(self, plan: list[ScheduledChunk]) -> Future | None:
        """Starts the masks of the plan's constrained rows in the mask thread (the next token's, and
        with drafts the token after each), so they are ready when sampling starts (llguidance
        computes without the GIL, beside the native step)."""
        jobs = [(c.seq.state.grammar, c.seq.draft_ids[: c.n_draft]) for c in plan
                if c.samples and c.seq.state.grammar is not None]
        if not jobs:
            return None
        if self._mask_thread is None:
            self._mask_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sysinfer-mask")
        return self._mask_thread.submit(_compute_masks, jobs)

    def postprocess(self, plan: list[ScheduledChunk], logits: np.ndarray) -> list[Event]:
        """Phase 3: account for computed tokens, sample, detokenize, check stops."""
        self.stats.steps += 1
        self.stats.prompt_tokens_computed += sum(c.count for c in plan if not c.is_decode)  # before tokens grow
        self.scheduler.after_step(plan)
        events: list[Event] = []
        row = 0
        for chunk in plan:
            seq = chunk.seq
            rows = None
            if chunk.samples:  # one row, or with drafts one per drafted token plus the one after
                rows, row = logits[row : row + 1 + chunk.n_draft], row + 1 + chunk.n_draft
            if seq.state.aborted:
                events.append((seq, self.finish(seq, "abort")))
            elif rows is not None:
                events.append((seq, self._next_tokens(seq, rows, seq.draft_ids[: chunk.n_draft], chunk.reserved > 0)))
        return events

    def fail_step(self, plan: list[ScheduledChunk], error: Exception) -> list[Event]:
        """The native step raised: its requests end with an error (their KV content is unknown)."""
        log.error("native step failed: %s: %s", type(error).__name__, error)
        return [(c.seq, self.fail(c.seq, f"the model step failed: {type(error).__name__}")) for c in plan
                if not c.seq.finished]

    def fail(self, seq: Sequence, message: str) -> Delta:
        return self.finish(seq, "error", error=message)

    def step(self) -> list[Event]:
        """schedule -> run -> postprocess, all in this thread (generate, bench)."""
        plan = self.plan()
        if not plan:
            return []
        try:
            logits = self.execute(plan)
        except Exception as e:  # noqa: BLE001 - the step's requests fail, the engine goes on
            return self.fail_step(plan, e)
        return self.postprocess(plan, logits)

    def _next_tokens(self, seq: Sequence, rows: np.ndarray, drafts: list[int], speculated: bool) -> Delta:
        """Samples the next token from rows[0]; with drafts, verifies them in order (row i checks
        drafts[i]) and keeps each accepted one, then the token that replaces the first rejected draft
        or follows the last accepted one. Stops at the request's end. `speculated`: the plan took
        draft slots (all drafts may have been dropped since; the slots go back all the same)."""
        state = seq.state
        tokens, texts, reason, accepted, confirmed = [], [], None, 0, 0
        draft_probs = self.drafter.draft_probs(seq) if self.drafter is not None and drafts else []
        try:
            for i in range(len(rows)):
                if i < len(drafts):
                    q = draft_probs[i] if i < len(draft_probs) else None  # None: a deterministic draft
                    token, ok = state.verify(rows[i], seq.output_ids, drafts[i], q)
                    confirmed += ok  # the model agrees, whether or not the request goes on after it
                else:
                    token, ok = state.sample(rows[i], seq.output_ids), False
                if not state.is_stop_token(token):
                    seq.output_ids.append(token)
                    self.stats.tokens_generated += 1
                text, reason = state.accept(token, len(seq.output_ids))
                tokens.append(token)
                texts.append(text)
                if reason or not ok:
                    break
                accepted += 1
        except Exception as e:  # noqa: BLE001 - this request fails, the others go on
            log.warning("request %s failed: %s: %s", seq.request_id, type(e).__name__, e)
            reason_text = str(e) if isinstance(e, SamplingError) else type(e).__name__
            return self.fail(seq, f"generation failed: {reason_text}")
        if speculated:
            if drafts:
                seq.drafted += len(drafts)
                seq.draft_accepted += confirmed
                self.stats.draft_tokens += len(drafts)
                self.stats.draft_steps += 1
                self.stats.accepted_draft_tokens += confirmed
            if self.drafter is not None:
                self.drafter.after_verify(seq, len(drafts), accepted)
            else:
                state.feedback(len(drafts), accepted)
            # Even when the request ends here: the accepted drafts' KV is computed, and their full
            # blocks are named in the prefix cache exactly as plain decoding would have named them.
            self.scheduler.accept_drafts(seq, accepted)
        logprobs = state.take_logprobs()
        if reason:
            return self.finish(seq, reason, tokens, "".join(texts), logprobs=logprobs)
        return Delta("".join(texts), tokens, logprobs=logprobs, reasoning=state.take_reasoning())

    # ---- the synchronous driver ----
    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[Delta]:
        """One request run to its end here (with whatever else is queued); yields its deltas."""
        return core.generate(self, prompt_ids, params)

    def lane_snapshots(self) -> list[EngineStats]:
        return [self.snapshot()]

    def snapshot(self) -> EngineStats:
        s = self.stats
        s.running, s.waiting = len(self.scheduler.running), len(self.scheduler.waiting)
        s.kv_blocks_used, s.kv_blocks_free = self.blocks.num_used, self.blocks.num_free
        s.kv_blocks_cached, s.prefix_hit_tokens = self.blocks.num_cached, self.blocks.prefix_hit_tokens
        s.preemptions = self.scheduler.preemptions
        if self.drafter is not None:
            s.draft_kv_blocks_used, s.draft_kv_blocks_free = self.drafter.blocks.num_used, self.drafter.blocks.num_free
            s.draft_model_seconds = self.drafter.stats.seconds
        return s


def _compute_masks(jobs: list) -> None:
    """The mask thread's job: (grammar, drafts) pairs. A grammar that fails here fails again when its
    row samples, where the error ends that request alone."""
    for grammar, drafts in jobs:
        try:
            grammar.compute_masks(drafts)
        except Exception:  # noqa: BLE001 - reported by the sampling that follows
            pass
