"""The engine on anyio: requests in, token deltas out, one native step at a time.

The loop runs schedule -> step -> postprocess. The step runs in a worker thread (it releases the
GIL), so the event loop keeps streaming to clients while the model computes. Scheduler state is
only touched on the event loop; a request whose client goes away is aborted and its KV blocks are
free before the next step is planned.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

import anyio
import numpy as np

from .block_manager import BlockManager
from .detokenizer import IncrementalDetokenizer, StopChecker
from .errors import ContextLengthError, EngineClosedError, QueueFullError
from .model_runner import ModelRunner
from .sampling import Sampler, SamplingError, SamplingParams
from .scheduler import ScheduledChunk, Scheduler
from .sequence import Sequence

_ids = itertools.count()
log = logging.getLogger("sysinfer.engine")


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Delta:
    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop", "length", "abort" or "error" on the last delta
    usage: Usage | None = None        # on the last delta
    error: str | None = None          # with finish_reason "error": what went wrong, for the client


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
    last_overhead_seconds: float = 0.0  # Python time around the last step (schedule, build, postprocess)
    step_seconds_total: float = 0.0
    overhead_seconds_total: float = 0.0


@dataclass
class _RequestState:
    sampler: Sampler
    detok: IncrementalDetokenizer
    stops: StopChecker
    stop_ids: set[int]
    send: object
    receive: object
    aborted: bool = False
    first_token_time: float | None = None
    submitted: float = field(default_factory=time.perf_counter)


class AsyncEngine:
    def __init__(self, model, tokenizer, *, max_batch: int = 1, max_queue: int = 1024,
                 max_step_tokens: int | None = None, enable_prefix_cache: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.blocks = BlockManager(model.n_kv_blocks, model.block_size, enable_prefix_cache)
        self.scheduler = Scheduler(self.blocks, max_batch, min(max_step_tokens or model.max_step_tokens,
                                                                model.max_step_tokens))
        if max_batch > model.max_out_rows:
            raise ValueError(f"max_batch {max_batch} exceeds the model's logits rows ({model.max_out_rows})")
        self.runner = ModelRunner(model)
        self.max_queue = max_queue
        self.by_id: dict[str, Sequence] = {}
        self.stats = EngineStats()
        self._wake = anyio.Event()
        self._closed = False
        self._closed_for_new = False  # draining: running requests go on, new ones are refused
        self._loop_done = anyio.Event()
        self._step_thread = anyio.CapacityLimiter(1)  # the engine's own: request threads can't delay a step
        self.failure: str | None = None  # set when the loop itself failed; /health reports it

    # ---- requests ----
    @property
    def max_total_tokens(self) -> int:
        """Prompt + reply tokens one request may have: the context, and what the KV cache can hold."""
        capacity = (self.blocks.num_blocks - self.blocks.watermark_blocks) * self.blocks.block_size
        return min(self.model.n_ctx, capacity)

    def check_prompt(self, n_prompt: int, max_tokens: int) -> None:
        if n_prompt < 1:
            raise ContextLengthError("the prompt is empty")
        if n_prompt + max_tokens > self.model.n_ctx:
            raise ContextLengthError(
                f"this model's context is {self.model.n_ctx} tokens; the prompt has {n_prompt} and max_tokens asks "
                f"for {max_tokens} more ({n_prompt + max_tokens} in all)")
        capacity = (self.blocks.num_blocks - self.blocks.watermark_blocks) * self.blocks.block_size
        if n_prompt + max_tokens > capacity:
            raise ContextLengthError(f"{n_prompt + max_tokens} tokens exceed the KV cache ({capacity} tokens)")

    def submit(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None) -> Sequence:
        """Queue a request (raises QueueFullError, ContextLengthError, EngineClosedError at once)."""
        if self.failure is not None:
            raise EngineClosedError(f"the engine has stopped: {self.failure}")
        if self._closed or self._closed_for_new:
            raise EngineClosedError("the server is shutting down")
        if len(self.scheduler.waiting) >= self.max_queue:
            raise QueueFullError(f"{len(self.scheduler.waiting)} requests are already waiting (max_queue)")
        self.check_prompt(len(prompt_ids), params.max_tokens)
        request_id = request_id or f"req-{next(_ids)}"
        if request_id in self.by_id:
            raise ValueError(f"request id {request_id!r} is already in use")
        send, receive = anyio.create_memory_object_stream(math.inf)
        seq = Sequence(request_id, list(prompt_ids), params)
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(self.tokenizer.stop_ids))
        seq.state = _RequestState(Sampler(params, prompt_ids), IncrementalDetokenizer(self.tokenizer, prompt_ids),
                                  StopChecker(params.stop), stop_ids, send, receive)
        self.by_id[request_id] = seq
        self.scheduler.add(seq)
        self._wake.set()
        return seq

    async def stream(self, seq: Sequence) -> AsyncIterator[Delta]:
        """Deltas of a submitted request; leaving early (client gone) aborts it."""
        try:
            async with seq.state.receive:
                async for delta in seq.state.receive:
                    yield delta
                    if delta.finish_reason:
                        return
        finally:
            if not seq.finished:
                self.abort(seq.request_id)

    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       request_id: str | None = None) -> AsyncIterator[Delta]:
        seq = self.submit(prompt_ids, params, request_id)
        async for delta in self.stream(seq):
            yield delta

    def abort(self, request_id: str) -> None:
        """Stop a request; its blocks are freed now if no step is using them, else right after."""
        seq = self.by_id.get(request_id)
        if seq is None or seq.finished:
            return
        seq.state.aborted = True
        if not self._stepping:
            self._finish(seq, "abort")
        self._wake.set()

    # ---- the loop ----
    _stepping = False

    async def run(self) -> None:
        """The engine loop; run it in a task group, stop it with shutdown().

        A failure that belongs to one request (its sampling, its stop check) ends that request alone
        and a failed native step ends the requests in that step; anything else is a bug in the loop
        itself: every request is ended with an error, `failure` says why and the loop stops, so that
        /health reports it and a supervisor restarts the server instead of it hanging half-alive."""
        try:
            while not self._closed:
                if not self.scheduler.has_work():
                    await self._wake.wait()
                    self._wake = anyio.Event()
                    continue
                await self._step_once()
        except Exception as e:  # noqa: BLE001 - reported, never swallowed
            self.failure = f"{type(e).__name__}: {e}"[:500]
            log.exception("engine loop failed")
            for seq in list(self.by_id.values()):
                self._fail(seq, "the engine stopped after an internal error")
        finally:
            self._loop_done.set()

    async def _step_once(self) -> None:
        t0 = time.perf_counter()
        plan = self.scheduler.schedule()
        if not plan:  # nothing fits right now (cannot happen without running sequences); wait for a change
            await self._wake.wait()
            self._wake = anyio.Event()
            return
        inputs = self.runner.build(plan)
        t1 = time.perf_counter()
        self._stepping = True
        try:
            logits = await anyio.to_thread.run_sync(self.runner.run, inputs, limiter=self._step_thread)
        except Exception as e:  # noqa: BLE001 - the step's requests fail, the engine goes on
            log.exception("native step failed")
            for chunk in plan:
                self._fail(chunk.seq, f"the model step failed: {type(e).__name__}")
            return
        finally:
            self._stepping = False
        t2 = time.perf_counter()
        self.stats.prompt_tokens_computed += sum(c.count for c in plan if not c.is_decode)  # before tokens grow
        self.scheduler.after_step(plan)
        self._postprocess(plan, logits)
        t3 = time.perf_counter()
        self.stats.steps += 1
        self.stats.last_step_seconds = t2 - t1
        self.stats.last_overhead_seconds = (t1 - t0) + (t3 - t2)
        self.stats.step_seconds_total += t2 - t1
        self.stats.overhead_seconds_total += (t1 - t0) + (t3 - t2)
        await anyio.sleep(0)  # let streams flush and new requests arrive between steps

    def _postprocess(self, plan: list[ScheduledChunk], logits: np.ndarray) -> None:
        row = 0
        for chunk in plan:
            seq = chunk.seq
            if not chunk.samples:
                if seq.state.aborted:
                    self._finish(seq, "abort")
                continue
            row_logits = logits[row]
            row += 1
            if seq.state.aborted:
                self._finish(seq, "abort")
                continue
            try:
                self._accept_token(seq, seq.state.sampler.sample(row_logits, seq.output_ids))
            except Exception as e:  # noqa: BLE001 - this request fails, the others go on
                log.warning("request %s failed: %s: %s", seq.request_id, type(e).__name__, e)
                self._fail(seq, f"generation failed: {e}" if isinstance(e, SamplingError) else
                           f"generation failed ({type(e).__name__})")

    def _accept_token(self, seq: Sequence, token: int) -> None:
        st = seq.state
        if st.first_token_time is None:
            st.first_token_time = time.perf_counter()
        if token in st.stop_ids:
            self._finish(seq, "stop", [token])
            return
        seq.output_ids.append(token)
        self.stats.tokens_generated += 1
        text, stopped = st.stops.feed(st.detok.add(token))
        if stopped:
            self._finish(seq, "stop", [token], text)
        elif len(seq.output_ids) >= seq.params.max_tokens:
            self._finish(seq, "length", [token], text)
        else:
            st.send.send_nowait(Delta(text, [token]))

    def _finish(self, seq: Sequence, reason: str, token_ids: list[int] | None = None, text: str = "",
                error: str | None = None) -> None:
        st = seq.state
        if reason in ("stop", "length") and not st.stops.stopped:
            tail, _ = st.stops.feed(st.detok.flush())
            text += tail + st.stops.flush()
        self.scheduler.finish(seq, reason)
        self.by_id.pop(seq.request_id, None)
        usage = Usage(len(seq.prompt_ids), len(seq.output_ids), seq.cached_prompt_tokens)
        try:
            st.send.send_nowait(Delta(text, token_ids or [], reason, usage, error))
            st.send.close()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the client is gone

    def _fail(self, seq: Sequence, message: str) -> None:
        """End one request with an error; its blocks are freed, the engine goes on."""
        if not seq.finished:
            self._finish(seq, "error", error=message)

    # ---- lifecycle and numbers ----
    async def drain(self, grace_seconds: float) -> None:
        """Graceful stop: take no new requests, let those already here run for up to grace_seconds,
        then end the rest with finish_reason "abort" (their streams still get a last chunk)."""
        self._closed_for_new = True
        self._wake.set()
        with anyio.move_on_after(grace_seconds):
            while self.by_id and self.failure is None:
                await anyio.sleep(0.05)
        await self.shutdown()

    async def shutdown(self) -> None:
        """Abort everything still queued or running and stop the loop."""
        self._closed = True
        for seq in list(self.by_id.values()):
            seq.state.aborted = True
            if not self._stepping:
                self._finish(seq, "abort")
        self._wake.set()
        await self._loop_done.wait()
        for seq in list(self.by_id.values()):
            self._finish(seq, "abort")

    def snapshot(self) -> EngineStats:
        s = self.stats
        s.running, s.waiting = len(self.scheduler.running), len(self.scheduler.waiting)
        s.kv_blocks_used, s.kv_blocks_free = self.blocks.num_used, self.blocks.num_free
        s.kv_blocks_cached, s.prefix_hit_tokens = self.blocks.num_cached, self.blocks.prefix_hit_tokens
        s.preemptions = self.scheduler.preemptions
        return s
