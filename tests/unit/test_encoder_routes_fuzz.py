"""Hostile bodies against the encoder routes (in process, fake encoders): every answer is a 200 of the
route's shape or a 4xx naming its reason, never a 5xx (tests/support/api_fuzz.py's encoder strategies)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from support.api_fuzz import ENCODER_BODIES, check_encoder_answer
from support.fake_encoder import FakeEncoder
from sysinfer.config import ServerConfig
from sysinfer.server import encoders
from sysinfer.server.app import create_app


@pytest.fixture(scope="module")
def client():
    mp = pytest.MonkeyPatch()
    mp.setattr(encoders, "_encoder_loader",
               lambda: lambda path, threads=None: FakeEncoder(kind="rerank" if "rerank" in path else "embedding", n_ctx=12))
    cfg = ServerConfig(embedding_model="/m/fuzz-embed.gguf", rerank_model="/m/fuzz-rerank.gguf").validate()
    with TestClient(create_app(cfg)) as c:
        import time
        for _ in range(200):
            if c.get("/health").status_code == 200:
                break
            time.sleep(0.02)
        yield c
    mp.undo()


@pytest.mark.parametrize("path", sorted(ENCODER_BODIES))
def test_encoder_routes_fuzz(client, path):
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(ENCODER_BODIES[path])
    def run(body):
        check_encoder_answer(client, path, body)
    run()
