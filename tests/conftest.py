"""Shared fixtures: model files come from tests/model_files.py (generated into a cache dir)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def load():
    """load(path, **kwargs) -> LoadedModel, cached per (path, kwargs) for the session."""
    from sysinfer.model.native_model import load_model

    cache = {}

    def _load(path: str, **kwargs):
        kwargs.setdefault("threads", 2)
        kwargs.setdefault("n_ctx", 1024)
        kwargs.setdefault("kv_blocks", 64)
        kwargs.setdefault("max_step_tokens", 512)  # the tests prefill up to 512 tokens in one step
        key = (path, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = load_model(path, **kwargs)
        return cache[key]

    return _load
