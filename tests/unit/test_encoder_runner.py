"""The encoder runner (engine/encoder_runner.py): inputs cut into bounded slices, one native call each,
in order; slices and chat steps never overlap (one compute limiter); while chat has work, encoders keep
to their share of the time; two requests take turns slice by slice."""

from __future__ import annotations

import time

import anyio
import numpy as np
import pytest

from support.fake_encoder import FakeEncoder
from sysinfer.engine.encoder_runner import EncoderRunner, slices


def test_slices_bound_tokens_and_keep_order():
    inputs = [[0] * n for n in (3, 3, 3, 10, 1, 1)]
    assert list(slices(inputs, 6)) == [(0, 2), (2, 3), (3, 4), (4, 6)]  # 10 > 6: alone
    assert list(slices(inputs, 100)) == [(0, 6)]
    assert list(slices([], 8)) == []


def test_embed_matches_one_call_and_cuts_slices():
    enc = FakeEncoder(dim=4)
    inputs = [enc.tokenize(f"word{i} other{i} more") for i in range(9)]  # 5 tokens each

    async def main():
        runner = EncoderRunner(enc, slice_tokens=12)
        return await runner.embed(inputs, normalize=True), runner.slices_run

    out, n = anyio.run(main)
    assert n == 5 and enc.calls == [10, 10, 10, 10, 5]
    np.testing.assert_array_equal(out, FakeEncoder(dim=4).embed(inputs, True))


def test_rerank_scores_in_input_order():
    enc = FakeEncoder(kind="rerank")
    pairs = [enc.tokenize_pair("a b", d) for d in ("x", "a", "a b")]
    out = anyio.run(lambda: EncoderRunner(enc).rerank(pairs))
    assert out.tolist() == [-0.5, 0.5, 1.5]


@pytest.mark.parametrize("share", [0.25, 0.5])
def test_share_while_chat_is_busy(share):
    """A busy chat "engine" (steps of 5 ms on the same limiter) against 20 slices of 20 ms: the
    encoder's fraction of the wall time stays near its share, and no step overlaps a slice."""
    enc = FakeEncoder(seconds_per_token=0.001)
    inputs = [[1] * 20 for _ in range(20)]
    compute = anyio.CapacityLimiter(1)
    steps, running = [], []

    def step():
        running.append(1)
        assert len(running) == 1
        time.sleep(0.005)
        running.pop()

    async def chat(done: anyio.Event):
        while not done.is_set():
            await anyio.to_thread.run_sync(step, limiter=compute)
            steps.append(time.perf_counter())
            await anyio.sleep(0)

    async def main():
        done = anyio.Event()
        runner = EncoderRunner(enc, compute, chat_busy=lambda: not done.is_set(), slice_tokens=20, share=share)
        async with anyio.create_task_group() as tg:
            tg.start_soon(chat, done)
            began = time.perf_counter()
            await runner.embed(inputs, normalize=False)
            wall = time.perf_counter() - began
            done.set()
        return runner.seconds / wall

    fraction = anyio.run(main)
    # at most its share (without the wait it takes ~0.8); the low bound is loose: on a loaded CI machine
    # thread hand-offs stretch the wall time
    assert share * 0.3 < fraction < share * 1.3, fraction
    assert len(steps) > 20


def test_no_pause_without_chat():
    enc = FakeEncoder(seconds_per_token=0.001)

    async def main():
        runner = EncoderRunner(enc, slice_tokens=20, share=0.1)
        began = time.perf_counter()
        await runner.embed([[1] * 20 for _ in range(10)], normalize=False)
        return runner.seconds / (time.perf_counter() - began)

    assert anyio.run(main) > 0.8


def test_requests_take_turns_slice_by_slice():
    enc = FakeEncoder(seconds_per_token=0.0005)
    order = []

    async def request(runner, tag, n):
        await runner.embed([[1] * 10] * n, normalize=False)
        order.append(tag)

    async def main():
        runner = EncoderRunner(enc, slice_tokens=10)
        async with anyio.create_task_group() as tg:
            tg.start_soon(request, runner, "big", 20)
            await anyio.sleep(0.02)
            tg.start_soon(request, runner, "small", 1)

    anyio.run(main)
    assert order == ["small", "big"]


def test_share_out_of_range():
    with pytest.raises(ValueError, match="share"):
        EncoderRunner(FakeEncoder(), share=0)
