"""Embeddings and rerank through real servers and real clients (issue 26; 27's embedding routes):
`sysinfer serve` with SmolLM2 (chat), all-MiniLM-L6-v2 converted to GGUF (embeddings) and a random
reranker of bge-reranker-v2-m3's layout, on one port. The `openai` client's embeddings.create (float
and base64, the vectors those of the model loaded in this process), TEI's /embed, rerank best first
(the order of the model's own scores), the `ollama` client's embed and LangChain's OllamaEmbeddings,
Chinese text, 300 inputs in one request (in several slices), inputs over the context (400 naming the input, or cut),
the metrics; chat still answers beside them. Then an embeddings-only `sysinfer serve`."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import numpy as np
import openai
import pytest

from support.encoder_files import minilm_gguf, xlmr_gguf
from support.servers import free_port, start_server

KEY = "sk-embed-test"


@pytest.fixture(scope="module")
def files():
    return {"embed": minilm_gguf("F16"), "rerank": xlmr_gguf("rerank")}


@pytest.fixture(scope="module")
def server(files):
    proc, base, _ = start_server(cli=True, SYSINFER_API_KEY=KEY, SYSINFER_EMBEDDING_MODEL=files["embed"],
                                 SYSINFER_EMBEDDING_MODEL_NAME="minilm", SYSINFER_RERANK_MODEL=files["rerank"],
                                 SYSINFER_RERANK_MODEL_NAME="reranker")
    yield base
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def local(files):
    """The same files loaded in this process: the vectors and scores the server must send."""
    from sysinfer.model.encoder_model import load_encoder
    return {"embed": load_encoder(files["embed"], threads=1), "rerank": load_encoder(files["rerank"], threads=1)}


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY)


def _cos(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


TEXTS = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today.",
         "欧拉操作系统运行在鲲鹏服务器上。"]


def test_openai_client_float_and_base64(client, local):
    m = local["embed"]
    want = m.embed([m.tokenize(t) for t in TEXTS], True)
    floats = client.embeddings.create(model="minilm", input=TEXTS, encoding_format="float")
    b64 = client.embeddings.create(model="minilm", input=TEXTS)  # the client asks base64 by default, decodes it
    assert floats.model == "minilm" and [d.index for d in floats.data] == [0, 1, 2, 3]
    assert floats.usage.prompt_tokens == sum(len(m.tokenize(t)) for t in TEXTS) == floats.usage.total_tokens
    for d, w, e in zip(floats.data, want, b64.data):
        assert len(d.embedding) == 384 and _cos(d.embedding, w) > 0.9999
        np.testing.assert_array_equal(np.asarray(e.embedding, np.float32), np.asarray(d.embedding, np.float32))
    v = [d.embedding for d in floats.data]
    assert _cos(v[0], v[1]) > _cos(v[0], v[2]) + 0.3  # a real model: the cat sentences are neighbours
    assert np.linalg.norm(v[3]) == pytest.approx(1, abs=1e-4)  # Chinese: [UNK]s and CJK pieces, still a vector
    cut = client.embeddings.create(model="minilm", input="A cat sits on the mat.", dimensions=128)
    assert len(cut.data[0].embedding) == 128 and _cos(cut.data[0].embedding, want[0][:128]) > 0.9999


def test_tei_embed_and_many_inputs(server, local):
    m = local["embed"]
    r = httpx.post(server + "/embed", json={"inputs": TEXTS[0], "normalize": True},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.status_code == 200 and len(r.json()) == 1 and len(r.json()[0]) == 384
    assert _cos(r.json()[0], m.embed([m.tokenize(TEXTS[0])], True)[0]) > 0.9999
    # many inputs in one request, in several slices (the 2,048 limit itself: tests/unit/test_encoder_routes.py,
    # over a fake encoder: 2,048 real inputs take seconds on a loaded CI machine)
    many = [f"item {i}" for i in range(300)]
    r = httpx.post(server + "/v1/embeddings", json={"input": many}, headers={"Authorization": f"Bearer {KEY}"},
                   timeout=300)
    assert r.status_code == 200 and len(r.json()["data"]) == 300, r.text[:300]
    assert r.json()["data"][299]["index"] == 299
    assert _cos(r.json()["data"][299]["embedding"], m.embed([m.tokenize("item 299")], True)[0]) > 0.9999


def test_over_the_context(client, local):
    long = "word " * 600  # > 512 tokens
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="minilm", input=["short", long], encoding_format="float")
    assert e.value.body["param"] == "input[1]" and e.value.body["code"] == "context_length_exceeded"
    cut = client.embeddings.create(model="minilm", input=["short", long], encoding_format="float",
                                   extra_body={"truncate": True})
    assert cut.usage.prompt_tokens == 3 + local["embed"].n_ctx


def test_rerank_order_and_shape(server, local):
    m = local["rerank"]
    docs = ["the first document", "another one here", "a third text", "and the last"]
    want = m.rerank([m.tokenize_pair("which document", d) for d in docs])
    r = httpx.post(server + "/v1/rerank", json={"model": "reranker", "query": "which document", "documents": docs,
                                                "top_n": 3}, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "reranker" and body["usage"]["total_tokens"] > 0
    assert [x["index"] for x in body["results"]] == list(np.argsort(-want, kind="stable")[:3])
    for x in body["results"]:
        assert x["relevance_score"] == pytest.approx(float(want[x["index"]]), abs=1e-4)  # the raw logit
        assert x["document"] == {"text": docs[x["index"]]}


def test_ollama_client_and_langchain(server, local):
    import ollama
    m = local["embed"]
    c = ollama.Client(host=server, headers={"Authorization": f"Bearer {KEY}"})
    out = c.embed(model="minilm", input=TEXTS[:2])
    assert len(out.embeddings) == 2 and out.prompt_eval_count > 0
    assert _cos(out.embeddings[0], m.embed([m.tokenize(TEXTS[0])], True)[0]) > 0.9999
    listed = {x.model for x in c.list().models}
    assert {"minilm:latest", "reranker:latest"} <= listed
    assert c.show("minilm").capabilities == ["embedding"]
    chat = (listed - {"minilm:latest", "reranker:latest"}).pop()  # the chat model's show is unchanged beside them
    assert c.show(chat).details.family == "llama" and "completion" in c.show(chat).capabilities
    try:
        from langchain_ollama import OllamaEmbeddings
    except ImportError:
        pytest.skip("langchain-ollama is not installed")
    emb = OllamaEmbeddings(model="minilm", base_url=server, client_kwargs={"headers": {"Authorization": f"Bearer {KEY}"}})
    docs = emb.embed_documents(TEXTS[:2])
    assert len(docs) == 2 and _cos(docs[1], out.embeddings[1]) > 0.9999
    assert _cos(emb.embed_query(TEXTS[0]), out.embeddings[0]) > 0.9999


def test_models_metrics_and_chat_beside(server, client):
    listed = {m.id: m.model_extra.get("kind") for m in client.models.list().data}
    assert listed["minilm"] == "embedding" and listed["reranker"] == "rerank" and "chat" in listed.values()
    reply = client.chat.completions.create(model="x", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert reply.choices[0].message.content is not None
    text = httpx.get(server + "/metrics").text
    assert 'sysinfer_encoder_requests_total{kind="embedding"}' in text
    assert 'sysinfer_encoder_tokens_total{kind="rerank"}' in text


def test_embeddings_only_server(files):
    """`sysinfer serve --embedding-model E.gguf` and nothing else: no chat model is loaded; the chat
    routes say so (404), /health tells what is served."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sysinfer.cli", "serve", "--embedding-model", files["embed"],
                             "--port", str(port), "--threads", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd="/")
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        health = httpx.get(base + "/health").json()
        assert health["model"] is None and [m["kind"] for m in health["models"]] == ["embedding"]
        r = httpx.post(base + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 404 and "no chat model" in r.json()["error"]["message"]
        r = httpx.post(base + "/v1/rerank", json={"query": "q", "documents": ["d"]})
        assert r.status_code == 404 and "--rerank-model" in r.json()["error"]["message"]
        r = httpx.post(base + "/v1/embeddings", json={"input": "hello"})
        assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 384
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_eulercopilot_embedding_calls_replayed(server, local):
    """EulerCopilot's two embedding clients as its framework writes them (apps/llm/embedding.py and
    providers/tei.py): type "openai" posts {endpoint}/embeddings with `input` a list and
    `encoding_format` "float" and reads data[i].embedding; type "mindie" (provider "tei") posts
    {endpoint}/embed one text at a time with normalize true and reads json[0]. The endpoints as the
    deployment guide gives them: with /v1 for openai, without for TEI. Its rerank URL ends in /v1/rerank."""
    m = local["embed"]
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    texts = ["测试文本", "openEuler 是一个开源操作系统。"]  # its dimension probe embeds "测试文本"
    want = m.embed([m.tokenize(t) for t in texts], True)
    r = httpx.post(server + "/v1" + "/embeddings", json={"input": texts, "model": "minilm", "encoding_format": "float"},
                   headers=headers, timeout=60)
    got = [item["embedding"] for item in r.json()["data"]]
    assert [_cos(g, w) for g, w in zip(got, want)] == pytest.approx([1, 1], abs=1e-4)
    for text, w in zip(texts, want):
        r = httpx.post(server + "/embed", json={"inputs": text, "normalize": True}, headers=headers, timeout=60)
        assert _cos(r.json()[0], w) > 0.9999
    r = httpx.post(server + "/v1/rerank", json={"model": "reranker", "query": "操作系统", "documents": texts, "top_n": 2},
                   headers=headers, timeout=60)
    assert r.status_code == 200 and len(r.json()["results"]) == 2
