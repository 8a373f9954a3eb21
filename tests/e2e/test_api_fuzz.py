"""Schema-driven fuzzing of both completion endpoints against a real server (a bounded slice; the
long campaign is scripts/fuzz_http.py): every answer is a 200 or a clear 4xx, the connection stays
usable, and the server still answers a normal request and reports healthy afterwards."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from support.api_fuzz import (FUZZ_MAX_QUEUE, OLLAMA_MODEL, chat_bodies, check_answer, check_ollama_answer,
                              completion_bodies, constrained_bodies, ollama_chat_bodies, ollama_generate_bodies)
from support.servers import start_server

CASES = 120  # per OpenAI endpoint in CI, about 15 s each on 2 cores (scripts/fuzz_http.py runs thousands)
CONSTRAINED_CASES = 25  # output constraints (compiling a hostile one takes up to 0.6 s)
OLLAMA_CASES = 40  # per Ollama endpoint


@pytest.fixture(scope="module")
def client():
    proc, base, _ = start_server(SYSINFER_MAX_BATCH="4", SYSINFER_MAX_QUEUE=str(FUZZ_MAX_QUEUE),
                                 SYSINFER_MODEL_NAME=OLLAMA_MODEL)
    with httpx.Client(base_url=base, timeout=60) as c:
        yield c
        assert c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}).status_code == 200
        assert c.get("/health").json()["status"] == "ok"
    proc.terminate()
    proc.wait(timeout=30)


@settings(max_examples=CASES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=chat_bodies)
def test_chat_completions_fuzz(client, body):
    check_answer(client, "/v1/chat/completions", body)


@settings(max_examples=CASES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=completion_bodies)
def test_completions_fuzz(client, body):
    check_answer(client, "/v1/completions", body)


@settings(max_examples=CONSTRAINED_CASES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=constrained_bodies)
def test_constrained_chat_fuzz(client, body):
    """Issue 29's class: hostile output constraints are a 200 that ends properly or a 400 naming
    the field, never a 500 (a grammar failing inside the step) or the internal grammar in a message."""
    check_answer(client, "/v1/chat/completions", body)


@settings(max_examples=OLLAMA_CASES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=ollama_chat_bodies)
def test_ollama_chat_fuzz(client, body):
    """Ollama's /api/chat bodies (issue 27): Ollama's shapes and error shape, never a 500."""
    check_ollama_answer(client, "/api/chat", body)


@settings(max_examples=OLLAMA_CASES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=ollama_generate_bodies)
def test_ollama_generate_fuzz(client, body):
    check_ollama_answer(client, "/api/generate", body)
