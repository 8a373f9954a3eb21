"""The engine on anyio, for the server: requests in, token deltas out, one native step at a time.

The loop runs LLMEngine's three phases: plan on the event loop, execute in a worker thread (the
native step releases the GIL, so the loop keeps streaming to clients while the model computes),
postprocess on the event loop. Engine state is only touched on the event loop; a request whose
client goes away is aborted and its KV blocks are free before the next step is planned.
"""

from __future__ import annotations

import logging
import math
import time
from typing import AsyncIterator

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..config import EngineConfig
from .errors import EngineClosedError, QueueFullError, TooManyChoicesError
from .lanes import make_core
from .llm_engine import EngineStats, Event
from .request_state import Delta
from .sampling import SamplingParams
from .sequence import Sequence, Status

log = logging.getLogger("sysinfer.engine")


_BACKLOG = 32  # unread deltas past which a client counts as not reading

# Where the engine loop's time goes, step by step (seconds since start, in /metrics): plan (schedule
# and drafts), execute (hand-off to the step thread, building the step's arrays, the native call,
# back), postprocess (sampling, detokenizing, stops), dispatch (deltas onto the requests' streams),
# stream (the loop's turn between steps: the SSE handlers shape and send the step's chunks, new
# requests come in), between (the rest of the loop from one step to the next, when it did not wait).
PHASES = ("plan", "execute", "postprocess", "dispatch", "stream", "between")


class _Streams:
    """One request's delta channel: the engine sends, the client's handler receives. A request with
    n choices has n sequences sharing one channel (each delta says its choice); it closes after the
    last of them finishes."""

    def __init__(self, deadline: float, n_choices: int = 1):
        self.send: MemoryObjectSendStream[Delta]
        self.receive: MemoryObjectReceiveStream[Delta]
        self.send, self.receive = anyio.create_memory_object_stream(math.inf)
        self.deadline = deadline              # time.monotonic() past which the request is ended
        self.backlog_since: float | None = None  # when unread deltas first passed _BACKLOG
        self.members: list[Sequence] = []     # the request's sequences submitted so far, choice order
        self.followers: list[SamplingParams] = []  # choices 1..n-1, submitted after choice 0's prefill
        self.unfinished = n_choices           # choices that have not sent their last delta yet
        self.admitted = anyio.Event()         # set once choice 0 leaves the queue (runs, or ends before it)
        self.shed = False                     # ended while still queued because the server is draining

    def stalled_for(self, now: float) -> float:
        """Seconds the reader has left more than _BACKLOG deltas unread (0 while it keeps up)."""
        if self.send.statistics().current_buffer_used <= _BACKLOG:
            self.backlog_since = None
            return 0.0
        if self.backlog_since is None:
            self.backlog_since = now
        return now - self.backlog_since


class AsyncEngine:
    def __init__(self, model, tokenizer, config: EngineConfig | None = None, *, draft_model=None, **fields):
        """config: the engine's settings, passed whole (fields: some of them replaced, for tests)."""
        self.config = config = EngineConfig.with_fields(config, fields)
        self.core = make_core(model, tokenizer, config, draft_model=draft_model)
        self.max_queue = config.max_queue
        self.request_timeout = config.request_timeout  # a request's whole life, queued and running
        self.stall_timeout = config.stall_timeout      # how long a streaming client may stop reading
        self.streams: dict[str, _Streams] = {}  # by request id of every sequence not yet finished
        self.requests: dict[str, _Streams] = {}  # by choice 0's request id, until every choice finished
        self.failure: str | None = None  # set when the loop itself failed; /health reports it
        self._wake = anyio.Event()
        self._closed = False            # the loop stops
        self._closed_for_new = False    # draining: running requests go on, new ones are refused
        self._stepping = False          # a native step is running: its sequences' blocks are in use
        self._step_thread = anyio.CapacityLimiter(1)  # the engine's own: request threads can't delay a step
        self._loop_done = anyio.Event()
        self._queued: set[_Streams] = set()  # requests whose choice 0 has not been admitted yet
        self.phase_seconds = dict.fromkeys(PHASES, 0.0)  # totals, see PHASES
        self._last_step_end: float | None = None  # perf_counter() at the end of the last step, while busy

    # the core's parts, for callers and tests
    @property
    def blocks(self):
        return self.core.blocks

    @property
    def scheduler(self):
        return self.core.scheduler

    @property
    def by_id(self) -> dict[str, Sequence]:
        return self.core.by_id

    @property
    def max_total_tokens(self) -> int:
        return self.core.max_total_tokens

    @property
    def stats(self) -> EngineStats:
        return self.core.stats

    @property
    def compute_limiter(self) -> anyio.CapacityLimiter:
        """The step thread's limiter: other native work (encoder calls) takes it too, so it never runs
        during a step and takes turns with the steps in order of arrival."""
        return self._step_thread

    def has_work(self) -> bool:
        """Sequences are running or waiting (encoders keep to their share of the time while so)."""
        return self.core.has_work()

    # ---- requests ----
    def submit(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None,
               more_choices: list[SamplingParams] | None = None) -> Sequence:
        """Queue a request (raises ContextLengthError, TooManyChoicesError, QueueFullError or
        EngineClosedError at once, in that order: what can never succeed before what may later).

        more_choices: the parameters of choices 1..n-1 of a request with n choices (OpenAI's `n`). They
        share this request's stream and are queued when choice 0 sends its first delta, that is once
        its prompt is computed and named in the prefix cache: they reuse its blocks instead of
        computing the prompt again (all but the last partial block, whose slots each sequence writes)."""
        more_choices = more_choices or []
        if self.failure is not None:
            raise EngineClosedError(f"the engine has stopped: {self.failure}")
        if self._closed or self._closed_for_new:
            raise EngineClosedError("the server is shutting down")
        for p in (params, *more_choices):  # same prompt; checked before anything is queued
            self.core.check_prompt(len(prompt_ids), p.max_tokens)
        # The queue counts sequences: a request with n choices takes n places. One that can never
        # fit is the request's fault (400), not "try later" (a client obeying Retry-After would retry for ever).
        n = 1 + len(more_choices)
        if n > self.max_queue:
            raise TooManyChoicesError(f"n={n} choices can never fit: this server queues at most {self.max_queue} "
                                      "sequences (max_queue), and each choice is one")
        waiting = len(self.core.scheduler.waiting)
        if waiting + n > self.max_queue:  # room for every choice now: none is refused later
            raise QueueFullError(f"{waiting} sequences are already waiting (max_queue {self.max_queue})")
        seq = self.core.add_request(prompt_ids, params, request_id)
        streams = _Streams(time.monotonic() + self.request_timeout, 1 + len(more_choices))
        streams.members.append(seq)
        streams.followers = list(more_choices)
        self.streams[seq.request_id] = self.requests[seq.request_id] = streams
        self._queued.add(streams)
        self._wake.set()
        return seq

    def admission(self, seq: Sequence) -> _Streams:
        """A submitted request's admission (call it right after submit): `await .admitted.wait()`
        returns once the request runs or has ended; `.shed` then says it was ended unserved, still
        queued, because the server is draining (the server answers 503 with Retry-After)."""
        return self.requests[seq.request_id]

    def _submit_followers(self, leader: Sequence, streams: _Streams) -> None:
        """Choice 0 has computed its prompt: queue choices 1..n-1 on the same stream."""
        if self._closed or self._closed_for_new or self.failure is not None:
            self._drop_followers(streams)  # draining: they end before they start
            return
        followers, streams.followers = streams.followers, []
        for choice, params in enumerate(followers, start=1):
            seq = self.core.add_request(leader.prompt_ids, params)
            seq.choice = choice
            streams.members.append(seq)
            self.streams[seq.request_id] = streams
        self._wake.set()

    def _drop_followers(self, streams: _Streams) -> None:
        """Choices not queued yet end with "abort" (the stream still closes when all choices ended)."""
        first = len(streams.members)
        for choice in range(first, first + len(streams.followers)):
            streams.unfinished -= 1
            self._put(streams, Delta("", [], "abort", choice=choice))
        streams.followers = []

    def stream(self, seq: Sequence) -> AsyncIterator[Delta]:
        """Deltas of a submitted request (of all its choices, each delta saying which); leaving early
        (client gone) aborts every choice still running. Call it right after submit(): the channel is
        looked up now, so a request that ends before the caller starts reading still delivers."""
        return self._deltas(self.streams[seq.request_id])

    async def _deltas(self, streams: _Streams) -> AsyncIterator[Delta]:
        try:
            async with streams.receive:
                async for delta in streams.receive:
                    yield delta
        finally:
            self._abort_all(streams)

    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       request_id: str | None = None) -> AsyncIterator[Delta]:
        seq = self.submit(prompt_ids, params, request_id)
        async for delta in self.stream(seq):
            yield delta

    def abort_request(self, request_id: str) -> None:
        """Stop every choice of the request whose choice 0 has this id."""
        streams = self.requests.get(request_id)
        if streams is None:
            self.abort(request_id)
        else:
            self._abort_all(streams)

    def _abort_all(self, streams: _Streams) -> None:
        self._drop_followers(streams)
        for member in streams.members:
            if not member.finished:
                self.abort(member.request_id)

    def abort(self, request_id: str) -> None:
        """Stop a request; its blocks are freed now if no step is using them, else right after."""
        seq = self.core.by_id.get(request_id)
        if seq is None or seq.finished:
            return
        seq.state.aborted = True
        # A sequence still waiting is in no step (admission makes it RUNNING when the step is planned):
        # its queue place is freed now, not when the running ones let it in (issue 29 item 4).
        if not self._stepping or seq.status == Status.WAITING:
            self._send(seq, self.core.finish(seq, "abort"))
        self._wake.set()

    # ---- the loop ----
    async def run(self) -> None:
        """The engine loop; run it in a task group, stop it with shutdown().

        A failure that belongs to one request ends that request alone (LLMEngine contains it); anything
        else is a bug in the loop itself: every request is ended with an error, `failure` says why and
        the loop stops, so that /health reports it and a supervisor restarts the server instead of it
        hanging half-alive."""
        try:
            while not self._closed:
                self._end_overdue()
                if not self.core.has_work():
                    self._last_step_end = None  # waiting is not the loop's cost
                    await self._wait_for_change()
                    continue
                await self._step_once()
        except Exception as e:  # noqa: BLE001 - reported, never swallowed
            self.failure = f"{type(e).__name__}: {e}"[:500]
            log.exception("engine loop failed")
            for seq in list(self.core.by_id.values()):
                self._send(seq, self.core.fail(seq, "the engine stopped after an internal error"))
        finally:
            self._loop_done.set()

    async def _wait_for_change(self) -> None:
        with anyio.move_on_after(1.0):  # wake at least each second to end overdue requests
            await self._wake.wait()
        self._wake = anyio.Event()

    def _end_overdue(self) -> None:
        """Requests past the server's time limit end as if they had reached max_tokens; streaming
        clients that left too many tokens unread for too long are dropped (their buffers stay bounded)."""
        now = time.monotonic()
        for request_id, streams in list(self.streams.items()):
            seq = self.core.by_id.get(request_id)
            if seq is None or seq.finished or seq.state.aborted:
                continue
            if now > streams.deadline:
                log.warning("request %s ended: over the %g s request time limit", request_id, self.request_timeout)
                self._end(seq, "length")
            elif streams.stalled_for(now) > self.stall_timeout:
                log.warning("request %s dropped: its client read nothing for %g s", request_id, self.stall_timeout)
                self.abort(request_id)

    def _end(self, seq: Sequence, reason: str) -> None:
        """Ends a request between steps (the loop calls this only when no step is running)."""
        self._send(seq, self.core.finish(seq, reason, text=seq.state.final_text(reason)))

    async def _step_once(self) -> None:
        t_plan = time.perf_counter()
        if self._last_step_end is not None:
            self.phase_seconds["between"] += t_plan - self._last_step_end
        self._last_step_end = None
        plan = self.core.plan()
        self._note_admitted()
        if not plan:  # nothing fits right now (cannot happen without running sequences); wait for a change
            await self._wait_for_change()
            return
        self._stepping = True
        t_execute = time.perf_counter()
        try:
            logits = await anyio.to_thread.run_sync(self.core.execute, plan, limiter=self._step_thread)
        except Exception as e:  # noqa: BLE001 - the step's requests fail, the engine goes on
            self._stepping = False
            self._dispatch(self.core.fail_step(plan, e))
            return
        self._stepping = False
        t_post = time.perf_counter()
        events = self.core.postprocess(plan, logits)
        t_dispatch = time.perf_counter()
        self._dispatch(events)
        t_stream = time.perf_counter()
        # Let the streams flush and new requests arrive between steps. Starting the next step first
        # and streaming while it runs was measured (docs/benchmarks.md, "Many streams"): on 2 cores it
        # took what it saved back in the step thread's wait for the GIL, and every chunk left later.
        await anyio.sleep(0)
        self._last_step_end = t_end = time.perf_counter()
        for phase, seconds in (("plan", t_execute - t_plan), ("execute", t_post - t_execute),
                               ("postprocess", t_dispatch - t_post), ("dispatch", t_stream - t_dispatch),
                               ("stream", t_end - t_stream)):
            self.phase_seconds[phase] += seconds

    def _note_admitted(self) -> None:
        """Requests whose choice 0 left the queue in this plan (a preempted sequence that waits again
        stays admitted: its client has had tokens)."""
        for streams in [s for s in self._queued if s.members[0].status is not Status.WAITING]:
            self._queued.discard(streams)
            streams.admitted.set()

    def _dispatch(self, events: list[Event]) -> None:
        for seq, delta in events:
            self._send(seq, delta)

    def _send(self, seq: Sequence, delta: Delta) -> None:
        streams = self.streams.get(seq.request_id)
        if streams is None:
            return
        delta.choice = seq.choice
        if delta.finish_reason:
            del self.streams[seq.request_id]
            streams.unfinished -= 1
        self._put(streams, delta)
        if streams.followers and seq is streams.members[0]:  # choice 0's first delta: its prompt is computed
            if delta.finish_reason in ("abort", "error"):
                self._drop_followers(streams)
            else:
                self._submit_followers(seq, streams)

    def _put(self, streams: _Streams, delta: Delta) -> None:
        try:
            streams.send.send_nowait(delta)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the client is gone
        if streams.unfinished == 0:
            streams.send.close()
            self.requests.pop(streams.members[0].request_id, None)
            self._queued.discard(streams)
            streams.admitted.set()

    # ---- lifecycle and numbers ----
    async def drain(self, grace_seconds: float, cut: anyio.Event | None = None) -> int:
        """Graceful stop: take no new requests; those still queued end at once, unserved (`shed`: the
        server answers them 503 with Retry-After, so their clients go elsewhere now, not after the
        drain); the running ones run for up to grace_seconds (or until `cut` is set), then the rest
        end with finish_reason "abort" (their streams still get a last chunk). Returns how many
        requests the drain had to cut that way."""
        self._closed_for_new = True
        for streams in list(self._queued):
            streams.shed = True
            self._abort_all(streams)
        self._wake.set()
        with anyio.move_on_after(grace_seconds):
            while self.requests and self.failure is None and not (cut is not None and cut.is_set()):
                await anyio.sleep(0.05)
        cut_short = len(self.requests)
        await self.shutdown()
        return cut_short

    async def shutdown(self) -> None:
        """Abort everything still queued or running and stop the loop."""
        self._closed = True
        for seq in list(self.core.by_id.values()):
            self.abort(seq.request_id)
        self._wake.set()
        await self._loop_done.wait()
        for seq in list(self.core.by_id.values()):  # those a step was using when the loop stopped
            self._send(seq, self.core.finish(seq, "abort"))

    def snapshot(self) -> EngineStats:
        return self.core.snapshot()

    def lane_snapshots(self) -> list[EngineStats]:
        """Per lane (--numa replicate: one per node; else the one engine)."""
        lanes = getattr(self.core, "lane_snapshots", None)
        return lanes() if lanes else [self.core.snapshot()]
