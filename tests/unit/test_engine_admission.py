"""Queue admission on a fake model (issue 29 items 1 and 4): a request that can never fit the queue
is refused as the request's fault, after the checks of its length; a queued request whose client
leaves gives its place back at once, even while a step of the running requests is in flight."""

from __future__ import annotations

import time

import anyio
import pytest

from support.fake_model import FakeModel, FakeTokenizer
from sysinfer.engine.async_engine import AsyncEngine
from sysinfer.engine.errors import ContextLengthError, QueueFullError, TooManyChoicesError
from sysinfer.engine.sampling import SamplingParams
from test_engine import assert_idle


class SlowModel(FakeModel):
    """A fake model whose steps take a while (in the engine's step thread), so a test can act while
    one is running."""

    def step(self, *args):
        time.sleep(0.02)
        return super().step(*args)


def test_more_choices_than_the_queue_holds_is_the_requests_fault():
    engine = AsyncEngine(FakeModel(n_ctx=256, n_kv_blocks=200), FakeTokenizer(), max_queue=4)
    with pytest.raises(TooManyChoicesError, match="n=5"):  # idle server: a 429 here could never succeed
        engine.submit([1, 2], SamplingParams(max_tokens=4), more_choices=[SamplingParams(max_tokens=4)] * 4)
    # The length is checked first: a request too long for the context says so, whatever its n.
    with pytest.raises(ContextLengthError):
        engine.submit([1, 2], SamplingParams(max_tokens=4000), more_choices=[SamplingParams(max_tokens=4000)] * 15)
    engine.submit([1, 2], SamplingParams(max_tokens=4), more_choices=[SamplingParams(max_tokens=4)] * 3)  # n = 4 fits
    with pytest.raises(QueueFullError, match="1 sequences are already waiting"):  # n = 4 again: later, maybe
        engine.submit([1, 2], SamplingParams(max_tokens=4), more_choices=[SamplingParams(max_tokens=4)] * 3)
    assert len(engine.scheduler.waiting) == 1


def test_a_queued_request_whose_client_leaves_frees_its_place_during_a_step():
    """With the batch full, the queued request's abort came while a step was running: it stayed
    queued (and counted against max_queue) until the running request finished."""
    engine = AsyncEngine(SlowModel(n_ctx=4096, n_kv_blocks=1100), FakeTokenizer(), max_batch=1, max_queue=1)
    seen: dict[str, object] = {}

    async def main():
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.run)
            running = engine.submit([1, 2], SamplingParams(max_tokens=4000))
            tg.start_soon(_drain, engine, running)
            while running.num_computed == 0:  # admitted and prefilled: the batch is full
                await anyio.sleep(0.001)
            queued = engine.submit([3, 4], SamplingParams(max_tokens=4))
            stream = engine.stream(queued)
            while not engine._stepping:
                await anyio.sleep(0.001)
            engine.abort_request(queued.request_id)  # the client left, mid-step
            seen["waiting"] = len(engine.scheduler.waiting)
            with anyio.move_on_after(5):  # the old code held it until the running request ended
                seen["last"] = [d.finish_reason async for d in stream]
            engine.submit([5, 6], SamplingParams(max_tokens=1))  # its place is free: no QueueFullError
            seen["running_went_on"] = not running.finished
            await engine.shutdown()

    anyio.run(main)
    assert seen == {"waiting": 0, "last": ["abort"], "running_went_on": True}
    assert_idle(engine)


async def _drain(engine: AsyncEngine, seq) -> None:
    async for _ in engine.stream(seq):
        pass


def test_drain_sheds_the_queue_at_once_and_counts_what_it_cut():
    """SIGTERM's path: a request still queued ends at once, unserved (`shed`: the server answers
    503 with Retry-After); the running one goes on until the grace period or `cut`, then ends with
    "abort"; drain() says how many it had to cut."""
    engine = AsyncEngine(SlowModel(n_ctx=4096, n_kv_blocks=1100), FakeTokenizer(), max_batch=1)
    seen: dict[str, object] = {}

    async def main():
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.run)
            running = engine.submit([1, 2], SamplingParams(max_tokens=4000))
            last: list = []

            async def read():
                async for d in engine.stream(running):
                    last[:] = [d.finish_reason]
            tg.start_soon(read)
            while running.num_computed == 0:
                await anyio.sleep(0.001)
            queued = engine.submit([3, 4], SamplingParams(max_tokens=4))
            admission = engine.admission(queued)
            first = engine.admission(running)
            cut = anyio.Event()
            result: list[int] = []

            async def drain():
                result.append(await engine.drain(30, cut))
            tg.start_soon(drain)
            with anyio.fail_after(2):
                await admission.admitted.wait()
            seen["queued"] = (admission.shed, queued.finish_reason, first.shed)
            seen["still_running"] = not running.finished
            cut.set()  # a second signal
            with anyio.fail_after(5):
                while not result:
                    await anyio.sleep(0.01)
            seen["cut"], seen["last"] = result[0], last

    anyio.run(main)
    assert seen == {"queued": (True, "abort", False), "still_running": True, "cut": 1, "last": ["abort"]}
    assert_idle(engine)
