"""The HTTP API with the real `openai` client against a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import time

import httpx
import openai
import pytest

from support.servers import SUPPORT_DIR, free_port, start_server

API_KEY = "test-key-123"


@pytest.fixture(scope="module")
def server_proc():
    proc, base, _ = start_server(SYSINFER_API_KEY=API_KEY, SYSINFER_MAX_BATCH="8", SYSINFER_MODEL_NAME="smollm2-test")
    yield proc, base
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(server_proc):
    return server_proc[1]


def test_startup_line_names_no_port_it_does_not_know(server_proc):
    """`uvicorn sysinfer.api:app --port N` (as start_server runs it): SYSINFER_PORT's default is not
    where it listens, so the start-up line must not name it."""
    proc, base = server_proc
    log = open(proc.log_path, encoding="utf-8").read()
    line = next(l for l in log.splitlines() if l.startswith("sysinfer: serving"))
    assert "7860" not in line and "chat page: / on the address uvicorn listens on" in line, line
    assert f"Uvicorn running on {base}" in log


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=API_KEY, max_retries=0)


def ask(client, content, **kw):
    return client.chat.completions.create(model="Baichuan2-13B-Chat-Q4_0", messages=[{"role": "user", "content": content}], **kw)


def test_models_list(client):
    assert [m.id for m in client.models.list().data] == ["smollm2-test"]


def test_chat_non_streaming(client):
    r = ask(client, "What is the capital of France?", max_tokens=24, temperature=0)
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length") and r.object == "chat.completion"
    assert r.usage.prompt_tokens > 10 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_streaming_shape_and_usage(client):
    chunks = list(ask(client, "Say hello.", max_tokens=12, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    content_chunks = [c for c in chunks if c.choices]
    assert content_chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in content_chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    text = "".join(c.choices[0].delta.content or "" for c in content_chunks)
    assert text.strip()


def test_completions(client):
    r = client.completions.create(model="x", prompt="The capital of France is", max_tokens=5, temperature=0)
    assert r.choices[0].text and r.object == "text_completion" and r.choices[0].finish_reason == "length"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="x", prompt="The capital of France is", max_tokens=5, temperature=0, stream=True) if c.choices)
    assert streamed == r.choices[0].text


def test_stop_string_is_not_sent(client):
    r = ask(client, "What is the capital of France?", max_tokens=30, temperature=0, stop=["Paris"])
    assert "Paris" not in r.choices[0].message.content and r.choices[0].finish_reason == "stop"
    text = "".join(c.choices[0].delta.content or "" for c in ask(
        client, "What is the capital of France?", max_tokens=30, temperature=0, stop="Paris", stream=True) if c.choices)
    assert text == r.choices[0].message.content


def test_ignore_eos_generates_max_tokens(client):
    """vLLM's and llama-server's `ignore_eos` (extra_body): the reply runs past end-of-sequence to
    max_tokens (benchmarks/serve_streams.py relies on it to compare servers on equal token counts)."""
    short = ask(client, "Say hi.", max_tokens=60, temperature=0)
    assert short.choices[0].finish_reason == "stop" and short.usage.completion_tokens < 60
    long = ask(client, "Say hi.", max_tokens=60, temperature=0, extra_body={"ignore_eos": True})
    assert long.choices[0].finish_reason == "length" and long.usage.completion_tokens == 60
    assert long.choices[0].message.content.startswith(short.choices[0].message.content)


def _step_counters(server) -> dict[str, float]:
    """Steps, native seconds and the engine loop's phase seconds from /metrics."""
    values = {}
    for line in httpx.get(server + "/metrics").text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in ("sysinfer_engine_steps_total", "sysinfer_native_step_seconds_total"):
            values[name] = float(value)
        elif name.startswith('sysinfer_engine_phase_seconds_total{phase="'):
            values[name.split('"')[1]] = float(value)
    return values


def test_metrics_count_steps_native_time_and_loop_phases(server, client):
    """Steps and native step time only grow, by at least a step per generated token (no speculation
    at max_batch 8); the native time stays within the request's wall time and within the loop's
    execute phase (which adds the hand-off to the step thread); every phase is counted."""
    before = _step_counters(server)
    start = time.perf_counter()
    r = ask(client, "Say hi.", max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    wall = time.perf_counter() - start
    added = {k: v - before.get(k, 0.0) for k, v in _step_counters(server).items()}
    assert added["sysinfer_engine_steps_total"] >= r.usage.completion_tokens == 12
    native = added["sysinfer_native_step_seconds_total"]
    assert 0 < native <= added["execute"] < wall
    assert set(added) >= {"plan", "execute", "postprocess", "dispatch", "stream", "between"}
    assert all(added[p] > 0 for p in ("plan", "postprocess", "stream"))
    assert sum(added[p] for p in ("plan", "execute", "postprocess", "dispatch", "stream", "between")) < wall


def test_seed_reproducible(client):
    a = ask(client, "Tell me a story.", max_tokens=20, temperature=0.9, seed=1234).choices[0].message.content
    b = ask(client, "Tell me a story.", max_tokens=20, temperature=0.9, seed=1234).choices[0].message.content
    assert a == b


def test_eulercopilot_request(client):
    stream = client.chat.completions.create(
        model="Baichuan2-13B-Chat-Q4_0",
        messages=[{"role": "system", "content": "You are a helpful assistant."},
                  {"role": "user", "content": "What is openEuler?"}],
        max_completion_tokens=16, temperature=0.0, stream=True, stream_options={"include_usage": True},
        extra_body={"enable_thinking": False})
    text, usage = "", None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage
    assert text and usage.completion_tokens == 16


def raw_post(server, body, headers=None, path="/v1/chat/completions"):
    h = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json", **(headers or {})}
    return httpx.post(server + path, content=body if isinstance(body, (bytes, str)) else None,
                      json=None if isinstance(body, (bytes, str)) else body, headers=h, timeout=60)


@pytest.mark.parametrize("body,fragment", [
    (b"{not json", "not valid JSON"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, "temperature"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
    ({"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "yaml"}}, "response_format"),
    ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, "tools"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 17}, "n"),
    ({"messages": [{"role": "user", "content": "hi"}], "ignore_eos": "maybe"}, "ignore_eos"),
])
def test_bad_requests_are_400_with_openai_error_body(server, body, fragment):
    r = raw_post(server, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert fragment in err["message"] and err["type"] == "invalid_request_error"
    assert "Traceback" not in r.text


def test_context_length_exceeded(client):
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, "hi", max_tokens=100000)
    assert info.value.code == "context_length_exceeded"


def test_auth(server):
    assert raw_post(server, {"messages": [{"role": "user", "content": "hi"}]}, {"Authorization": "Bearer nope"}).status_code == 401
    r = httpx.post(server + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server + "/health").status_code == 200  # health and metrics stay open


def test_oversized_body_is_413(server):
    big = {"messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]}
    assert raw_post(server, big).status_code == 413


def test_disconnect_mid_stream_frees_blocks(server):
    with httpx.stream("POST", server + "/v1/chat/completions", timeout=60, headers={"Authorization": f"Bearer {API_KEY}"},
                      json={"messages": [{"role": "user", "content": "Write a long essay about the sea."}],
                            "max_tokens": 500, "stream": True}) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 6:
                break  # hang up
    deadline = time.time() + 10
    while time.time() < deadline:
        metrics = httpx.get(server + "/metrics").text
        used = [line for line in metrics.splitlines() if line.startswith("sysinfer_kv_blocks_used ")]
        running = [line for line in metrics.splitlines() if line.startswith("sysinfer_running_sequences ")]
        if used == ["sysinfer_kv_blocks_used 0.0"] and running == ["sysinfer_running_sequences 0.0"]:
            return
        time.sleep(0.1)
    pytest.fail(f"blocks not freed: {used} {running}")


def test_eight_concurrent_streams(client):
    questions = ["What is the capital of France?", "Name a primary color.", "What is 2+2?", "Say hello in French.",
                 "What is water made of?", "Who wrote Hamlet?", "What is the largest planet?", "Count to five."]

    def stream(q):
        return "".join(c.choices[0].delta.content or "" for c in ask(client, q, max_tokens=16, temperature=0, stream=True)
                       if c.choices)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(stream, questions))
    assert together == [stream(q) for q in questions]


def test_queue_full_is_429():
    proc, base, _ = start_server(SYSINFER_MAX_BATCH="1", SYSINFER_MAX_QUEUE="1")
    try:
        c = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0)

        def long_request(_):
            try:
                ask(c, "Write a long essay about mountains.", max_tokens=120)
                return 200
            except openai.RateLimitError as e:
                assert e.response.headers.get("retry-after")
                return 429

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(long_request, range(4)))
        assert 429 in statuses and 200 in statuses
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_health_is_503_while_no_model_is_ready(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 40)
    port = free_port()
    env = {**os.environ, "SYSINFER_MODEL": str(bad)}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "sysinfer.api:app", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=SUPPORT_DIR)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline, r = time.time() + 60, None
        while time.time() < deadline:
            try:
                r = httpx.get(base + "/health", timeout=2)
                if r.json().get("status") == "error":
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        assert r is not None and r.status_code == 503 and "corrupt or truncated" in r.json()["error"]
        c = httpx.post(base + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert c.status_code == 503 and c.json()["error"]["code"] == "model_not_ready"
        assert "corrupt or truncated" in c.json()["error"]["message"]  # the reason, not only "failed"
        assert httpx.get(base + "/v1/models").json()["data"] == []  # no model listed while none is loaded
        assert proc.poll() is None  # under uvicorn it stays up to report (sysinfer serve exits: test_cli_serve)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
