"""One EngineConfig, built from the server's config and passed whole to every layer of the engine;
each default has one home."""

from __future__ import annotations

import math

import pytest

from support.fake_model import FakeModel, FakeReplicas, FakeTokenizer
from sysinfer import limits
from sysinfer.config import EngineConfig, ServerConfig
from sysinfer.engine.async_engine import AsyncEngine
from sysinfer.engine.lanes import make_core
from sysinfer.topology import NUMA_MODES


@pytest.mark.parametrize("model", [FakeModel(), FakeReplicas(2)], ids=["one", "lanes"])
def test_the_server_config_reaches_every_core_whole(model):
    cfg = ServerConfig(max_batch=4, max_queue=7, prefix_cache=False, request_timeout=9.0, stall_timeout=3.0,
                       speculative="on", draft_lookup=False).validate()
    config = cfg.engine_config()
    assert config == EngineConfig(max_batch=4, max_step_tokens=cfg.max_step_tokens, enable_prefix_cache=False,
                                  speculative=True, lookup_first=False, max_queue=7, request_timeout=9.0,
                                  stall_timeout=3.0)
    engine = AsyncEngine(model, FakeTokenizer(), config)
    assert engine.config is config and engine.core.config is config
    for core in getattr(engine.core, "lanes", [engine.core]):
        assert core.config is config and core.scheduler.max_batch == 4 and not core.blocks.enable_prefix_cache
        assert core.draft_limit > 0
    assert (engine.max_queue, engine.request_timeout, engine.stall_timeout) == (7, 9.0, 3.0)


def test_defaults_have_one_home():
    """max_queue was 256 in the config and 1024 in the engine; max_tokens 4096 and 256 in three places."""
    assert EngineConfig().max_queue == ServerConfig().max_queue == limits.DEFAULT_MAX_QUEUE
    assert ServerConfig().max_tokens == limits.DEFAULT_MAX_TOKENS
    assert AsyncEngine(FakeModel(), FakeTokenizer()).max_queue == limits.DEFAULT_MAX_QUEUE
    assert NUMA_MODES is limits.NUMA_MODES
    assert math.isinf(EngineConfig().request_timeout)


def test_fields_as_keywords_and_their_checks():
    core = make_core(FakeModel(), FakeTokenizer(), EngineConfig(max_batch=2), max_queue=5)
    assert core.config == EngineConfig(max_batch=2, max_queue=5)
    with pytest.raises(TypeError):
        make_core(FakeModel(), FakeTokenizer(), max_bach=2)  # a misspelt setting is not silently ignored
    with pytest.raises(ValueError, match="max_batch must be at least 1, got 0"):
        EngineConfig(max_batch=0)
    with pytest.raises(ValueError, match="not supported with numa replicate"):
        make_core(FakeReplicas(2), FakeTokenizer(), speculative=True, draft_model=FakeModel())
