"""One engine interface (sysinfer/engine/core.py): LLMEngine and Lanes (--numa replicate) both
implement EngineCore with the same signatures, so what the server calls on one works on the other.
The engine tests in test_engine.py and test_choices.py run on both (fake models; the real model's
two forced-node replicas are in tests/native/test_numa.py)."""

from __future__ import annotations

import inspect

import anyio
import pytest

from support.fake_model import FakeModel, FakeReplicas, FakeTokenizer, expected_tokens
from sysinfer.engine.async_engine import AsyncEngine
from sysinfer.engine.core import EngineCore
from sysinfer.engine.errors import ContextLengthError
from sysinfer.engine.lanes import Lanes, make_core
from sysinfer.engine.llm_engine import LLMEngine
from sysinfer.engine.sampling import SamplingParams


def _members() -> list[str]:
    return sorted(n for n in vars(EngineCore) if not n.startswith("_") and
                  (callable(vars(EngineCore)[n]) or isinstance(vars(EngineCore)[n], property)))


def _shape(member) -> list[tuple]:
    """A method's parameters as (name, kind, default): what a caller depends on."""
    if isinstance(member, property):
        return ["property"]
    return [(p.name, p.kind, p.default) for p in inspect.signature(member).parameters.values()]


@pytest.mark.parametrize("cls", [LLMEngine, Lanes])
@pytest.mark.parametrize("name", _members())
def test_every_core_method_has_the_interface_signature(cls, name):
    """The guard against drift: a parameter added to one core and not the other fails here."""
    assert name in dir(cls), f"{cls.__name__} lacks {name}"
    assert _shape(inspect.getattr_static(cls, name)) == _shape(vars(EngineCore)[name]), (cls.__name__, name)


@pytest.mark.parametrize("model", [FakeModel(), FakeReplicas(2)], ids=["one", "lanes"])
def test_both_cores_are_engine_cores(model):
    core = make_core(model, FakeTokenizer())
    assert isinstance(core, EngineCore)
    assert isinstance(core, Lanes) == hasattr(model, "replicas")
    assert len(core.lane_snapshots()) == len(getattr(model, "replicas", [model]))


def test_replicated_request_with_n_choices():
    """--numa replicate answered every request with n >= 2 with a 500: AsyncEngine.submit checks the
    other choices' length with core.check_prompt, which Lanes lacked."""
    engine = AsyncEngine(FakeReplicas(2), FakeTokenizer(), max_batch=2)
    prompt, got = [3, 1, 4, 1, 5], []

    async def main():
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.run)
            params = [SamplingParams(max_tokens=5) for _ in range(3)]
            seq = engine.submit(prompt, params[0], more_choices=params[1:])
            async for d in engine.stream(seq):
                got.append(d)
            await engine.shutdown()

    anyio.run(main)
    by_choice = {c: [t for d in got if d.choice == c for t in d.token_ids] for c in range(3)}
    assert by_choice == {c: expected_tokens(prompt, 5) for c in range(3)}
    assert sorted(d.choice for d in got if d.finish_reason == "length") == [0, 1, 2]
    with pytest.raises(ContextLengthError):  # and a choice too long for the lanes is refused up front
        engine.core.check_prompt(len(prompt), 10_000)


@pytest.mark.parametrize("model", [FakeModel(), FakeReplicas(2)], ids=["one", "lanes"])
def test_finish_carries_logprobs(model):
    """Lanes.finish had no logprobs argument (LLMEngine.finish had): a finish with logprobs raised."""
    core = make_core(model, FakeTokenizer())
    seq = core.add_request([1, 2], SamplingParams(max_tokens=4))
    logprobs = [{"token": 3, "logprob": -0.5}]
    delta = core.finish(seq, "stop", [3], "c", logprobs=logprobs)
    assert delta.logprobs == logprobs and delta.finish_reason == "stop" and not core.by_id


@pytest.mark.parametrize("model", [FakeModel(), FakeReplicas(2)], ids=["one", "lanes"])
def test_generate_on_both_cores(model):
    """The synchronous driver (`sysinfer generate`, bench) is the same code over either core."""
    core = make_core(model, FakeTokenizer())
    deltas = list(core.generate([5, 6, 7], SamplingParams(max_tokens=6)))
    assert [t for d in deltas for t in d.token_ids] == expected_tokens([5, 6, 7], 6)
    assert deltas[-1].finish_reason == "length" and not core.by_id and not core.has_work()
