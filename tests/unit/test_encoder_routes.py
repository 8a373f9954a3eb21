"""The encoder routes in process, over a fake encoder (no GGUF): answer shapes of OpenAI's
/v1/embeddings (float and base64), TEI's /embed, rerank (Jina/Cohere and TEI shapes, best first),
Ollama's /api/embed and /api/embeddings; refusals (bad types naming the element, over the context,
2,049 inputs, huge bodies, unknown Ollama names); an embeddings-only server (no chat model: chat routes
404, /health and /v1/models tell what is served); the metrics counters."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from fastapi.testclient import TestClient

from support.fake_encoder import FakeEncoder
from sysinfer.config import ServerConfig
from sysinfer.limits import MAX_ENCODER_INPUTS
from sysinfer.server import encoders
from sysinfer.server.app import create_app

KEY = "sk-enc"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _fake_loader(path: str, threads=None):
    return FakeEncoder(kind="rerank" if "rerank" in path else "embedding", n_ctx=16)


@pytest.fixture(scope="module")
def client():
    mp = pytest.MonkeyPatch()
    mp.setattr(encoders, "_encoder_loader", lambda: _fake_loader)
    cfg = ServerConfig(embedding_model="/models/mini-embed.gguf", rerank_model="/models/mini-rerank.gguf",
                       api_key=KEY, max_body_bytes=300_000).validate()
    with TestClient(create_app(cfg)) as c:
        for _ in range(200):
            if c.get("/health").status_code == 200:
                break
            import time
            time.sleep(0.02)
        yield c
    mp.undo()


def _post(client, path, body, status=200):
    r = client.post(path, json=body, headers=AUTH)
    assert r.status_code == status, r.text
    return r.json()


def _reference(texts, normalize=True):
    enc = FakeEncoder()
    return enc.embed([enc.tokenize(t) for t in texts], normalize)


def test_health_and_models_without_a_chat_model(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] is None
    assert {(m["id"], m["kind"]) for m in health["models"]} == {("mini-embed", "embedding"), ("mini-rerank", "rerank")}
    listed = client.get("/v1/models", headers=AUTH).json()["data"]
    assert [(m["id"], m["kind"]) for m in listed] == [("mini-embed", "embedding"), ("mini-rerank", "rerank")]
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}, headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert "no chat model" in r.json()["error"]["message"]
    r = client.post("/api/chat", json={"model": "x", "messages": [{"role": "user", "content": "hi"}]}, headers=AUTH)
    assert r.status_code == 404 and "no chat model" in r.json()["error"]
    tags = client.get("/api/tags", headers=AUTH).json()["models"]
    assert [m["name"] for m in tags] == ["mini-embed:latest", "mini-rerank:latest"]


def test_openai_float_and_base64(client):
    texts = ["hello world", "中文 文本 测试"]
    body = _post(client, "/v1/embeddings", {"input": texts, "model": "anything"})
    assert body["object"] == "list" and body["model"] == "mini-embed"
    assert [d["index"] for d in body["data"]] == [0, 1] and body["data"][0]["object"] == "embedding"
    ref = _reference(texts)
    np.testing.assert_allclose([d["embedding"] for d in body["data"]], ref, rtol=1e-6)
    assert body["usage"] == {"prompt_tokens": 4 + 5, "total_tokens": 9}
    b64 = _post(client, "/embeddings", {"input": texts, "encoding_format": "base64"})
    got = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in b64["data"]]
    np.testing.assert_array_equal(got, np.asarray([d["embedding"] for d in body["data"]], np.float32))
    one = _post(client, "/v1/embeddings", {"input": "hello world", "dimensions": 4})
    assert len(one["data"]) == 1 and np.linalg.norm(one["data"][0]["embedding"]) == pytest.approx(1, rel=1e-5)
    ids = _post(client, "/v1/embeddings", {"input": [[1, 5, 2], [1, 6, 2]]})
    assert len(ids["data"]) == 2 and ids["usage"]["prompt_tokens"] == 6


def test_tei_embed(client):
    body = _post(client, "/embed", {"inputs": "hello world"})
    np.testing.assert_allclose(body, _reference(["hello world"]), rtol=1e-6)
    raw = _post(client, "/embed", {"inputs": ["hello world", ""], "normalize": False})
    np.testing.assert_allclose(raw, _reference(["hello world", ""], normalize=False), rtol=1e-6)


def test_rerank_shapes_and_order(client):
    docs = ["apples and pears", "the cat sat", {"text": "cat and dog"}]
    body = _post(client, "/v1/rerank", {"query": "cat dog", "documents": docs, "top_n": 2})
    assert body["model"] == "mini-rerank" and body["usage"]["total_tokens"] > 0
    assert [r["index"] for r in body["results"]] == [2, 1]
    assert body["results"][0] == {"index": 2, "relevance_score": 1.5, "document": {"text": "cat and dog"}}
    bare = _post(client, "/rerank", {"query": "cat dog", "documents": docs, "return_documents": False})
    assert [r["index"] for r in bare["results"]] == [2, 1, 0] and "document" not in bare["results"][0]
    tei = _post(client, "/rerank", {"query": "cat dog", "texts": ["apples", "cat and dog"], "raw_scores": True})
    assert tei == [{"index": 1, "score": 1.5}, {"index": 0, "score": -0.5}]


def test_ollama_embed_and_embeddings(client):
    body = _post(client, "/api/embed", {"model": "mini-embed", "input": ["hello world", "cat"]})
    assert body["model"] == "mini-embed" and body["prompt_eval_count"] == 7
    np.testing.assert_allclose(body["embeddings"], _reference(["hello world", "cat"]), rtol=1e-6)
    assert body["total_duration"] > 0 and body["load_duration"] >= 0
    assert _post(client, "/api/embed", {"model": "mini-embed:latest", "input": ""})["embeddings"] == []
    long = " ".join(f"w{i}" for i in range(40))  # over the fake's 16-token context: Ollama cuts by default
    assert len(_post(client, "/api/embed", {"model": "mini-embed", "input": long})["embeddings"]) == 1
    r = client.post("/api/embed", json={"model": "mini-embed", "input": long, "truncate": False}, headers=AUTH)
    assert r.status_code == 400 and "input[0]" in r.json()["error"]
    legacy = _post(client, "/api/embeddings", {"model": "mini-embed", "prompt": "hello world"})
    np.testing.assert_allclose(legacy["embedding"], _reference(["hello world"], normalize=False)[0], rtol=1e-6)
    assert _post(client, "/api/embeddings", {"model": "mini-embed", "prompt": ""}) == {"embedding": []}
    r = client.post("/api/embed", json={"model": "nomic-embed-text", "input": "x"}, headers=AUTH)
    assert r.status_code == 404 and "mini-embed:latest" in r.json()["error"]


@pytest.mark.parametrize("path, body, param", [
    ("/v1/embeddings", {"input": ["a", 1]}, "input[1]"),
    ("/v1/embeddings", {"input": ""}, "input"),
    ("/v1/embeddings", {"input": [[1, 2], "x"]}, "input[1]"),
    ("/v1/embeddings", {}, "input"),
    ("/v1/embeddings", {"input": "a", "encoding_format": "int8"}, "encoding_format"),
    ("/v1/embeddings", {"input": "a", "dimensions": 99}, "dimensions"),
    ("/v1/embeddings", {"input": [[1, 5000]]}, "input[0]"),  # outside the vocabulary
    ("/v1/embeddings", {"input": ["x"] * (MAX_ENCODER_INPUTS + 1)}, "input"),
    ("/v1/embeddings", {"input": ["ok", " ".join(["w"] * 40)]}, "input[1]"),  # over the context
    ("/embed", {"inputs": 5}, "inputs"),
    ("/embed", {"inputs": "a", "normalize": "yes"}, "normalize"),
    ("/v1/rerank", {"query": "q", "documents": ["a", 3]}, "documents[1]"),
    ("/v1/rerank", {"documents": ["a"]}, "query"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, "top_n"),
    ("/v1/rerank", {"query": "q", "documents": [" ".join(["w"] * 40)]}, "documents[0]"),
])
def test_refusals(client, path, body, param):
    r = client.post(path, json=body, headers=AUTH)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error", err


def test_truncate_when_asked_and_limits(client):
    long = " ".join(["w"] * 40)
    body = _post(client, "/v1/embeddings", {"input": [long, "a"], "truncate": True})
    assert body["usage"]["prompt_tokens"] == 16 + 3
    many = _post(client, "/v1/embeddings", {"input": ["a b"] * MAX_ENCODER_INPUTS})
    assert len(many["data"]) == MAX_ENCODER_INPUTS and many["data"][-1]["index"] == MAX_ENCODER_INPUTS - 1
    r = client.post("/v1/embeddings", content=b'{"input": "' + b"a" * 400_000 + b'"}', headers=AUTH)
    assert r.status_code == 413
    assert client.post("/v1/embeddings", json={"input": "a"}).status_code == 401


def test_metrics_count_encoder_work(client):
    _post(client, "/v1/rerank", {"query": "q", "documents": ["a", "b"]})
    text = client.get("/metrics").text
    lines = {l.split(" ")[0]: float(l.split(" ")[1]) for l in text.splitlines() if l.startswith("sysinfer_encoder")}
    assert lines['sysinfer_encoder_requests_total{kind="embedding"}'] >= 1
    assert lines['sysinfer_encoder_tokens_total{kind="rerank"}'] >= 8


def test_lone_surrogates_are_read_as_replacement_characters(client):
    """JSON may carry "\\ud800", which UTF-8 can't hold: the tokenizer reads U+FFFD (a 500 before)."""
    r = client.post("/v1/embeddings", content=b'{"input": ["a \\ud800 b", "\\udfff"]}', headers=AUTH)
    assert r.status_code == 200 and len(r.json()["data"]) == 2
    r = client.post("/v1/rerank", content=b'{"query": "\\ud800", "documents": ["x \\udc00"]}', headers=AUTH)
    assert r.status_code == 200


def test_a_client_that_leaves_ends_its_batch_at_the_next_slice():
    """The runner stops between slices once the client is gone (before, a timed-out 2,048-input
    request kept the cores to the end)."""
    import anyio

    from sysinfer.engine.encoder_runner import EncoderRunner
    from sysinfer.server.encoder_routes import ClientGone, _unless_gone

    enc = FakeEncoder(seconds_per_token=0.002)
    runner = EncoderRunner(enc, slice_tokens=10)

    class Leaving:  # a request whose client disconnects after 50 ms
        async def receive(self):
            await anyio.sleep(0.05)
            return {"type": "http.disconnect"}

    async def main():
        with pytest.raises(ClientGone):
            await _unless_gone(Leaving(), lambda: runner.embed([[1] * 10] * 50, normalize=False))

    anyio.run(main)
    assert 1 <= runner.slices_run <= 5  # 50 slices of 20 ms were asked


def test_encoders_load_before_the_chat_model(monkeypatch):
    """The chat model's KV cache is sized from the memory still available: the encoders' weights must
    be in memory by then (they loaded after it before, so the KV cap did not count them)."""
    from sysinfer import startup
    from sysinfer.server import lifecycle
    from sysinfer.server.state import ServerState

    order = []

    def fake_encoder(path, threads=None):
        order.append("encoder")
        return FakeEncoder()

    def fake_chat(cfg):
        order.append("chat")
        raise RuntimeError("stop here")

    monkeypatch.setattr(encoders, "_encoder_loader", lambda: fake_encoder)
    monkeypatch.setattr(startup, "load_serving_model", fake_chat)
    state = ServerState(ServerConfig(model="chat.gguf", embedding_model="/m/e.gguf").validate())
    with pytest.raises(RuntimeError, match="stop here"):
        lifecycle._load(state)
    assert order == ["encoder", "chat"]


def test_ollama_show_of_an_encoder(client):
    shown = _post(client, "/api/show", {"model": "mini-embed:latest"})
    assert shown["capabilities"] == ["embedding"] and shown["model_info"]["bert.context_length"] == 16
    assert shown["model_info"]["bert.embedding_length"] == 8 and shown["details"]["family"] == "bert"
    assert _post(client, "/api/show", {"model": "mini-rerank"})["capabilities"] == ["rerank"]
    r = client.post("/api/show", json={"model": "llama3"}, headers=AUTH)
    assert r.status_code == 404 and "mini-embed:latest" in r.json()["error"]
