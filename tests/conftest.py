"""Shared fixtures. The tests are grouped by what they need:
- unit/: pure Python (engine on a fake model, sampling, tokenizers, templates, GGUF parsing and fuzzing);
- native/: the native core (kernels natively and under qemu, forward passes against the numpy
  reference, the real engine, sanitizer builds);
- e2e/: real servers and the CLI (API with the openai client, hostile input, fuzzing, disconnects,
  locust, README examples).
Helpers live in support/ (model files generated into a cache dir, the fake model, the numpy
reference, servers, kernel builds): the package `support`, found through pyproject.toml's
`pythonpath = ["tests"]` (support/__init__.py says how scripts find it)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest



_FOLDER_MARKERS = {"unit": ("unit",), "native": ("native", "slow"), "e2e": ("e2e", "slow")}


def pytest_collection_modifyitems(config, items):
    """Markers by folder (pyproject.toml lists them): `-m unit`, `-m "not slow"`, `-m e2e`..."""
    root = Path(__file__).resolve().parent
    for item in items:
        try:
            folder = Path(item.fspath).resolve().relative_to(root).parts[0]
        except ValueError:
            continue
        for name in _FOLDER_MARKERS.get(folder, ()):
            item.add_marker(name)


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
