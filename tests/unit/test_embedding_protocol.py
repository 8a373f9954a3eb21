"""The encoder APIs' input checks and answer shapes (server/embedding_protocol.py): every input form
OpenAI accepts, refusals naming the element, truncation keeping the closing token, base64 as
little-endian float32, `dimensions` renormalised, rerank results best first."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from sysinfer.limits import MAX_ENCODER_INPUTS
from sysinfer.server.embedding_protocol import (InputError, RerankRequest, cut_dimensions, embedding_inputs, fit,
                                                openai_embeddings, rerank_documents, rerank_results,
                                                tei_rerank_results)


@pytest.mark.parametrize("value, texts, ids", [
    ("hello", ["hello"], None),
    (["a", "b"], ["a", "b"], None),
    ([5, 6, 7], None, [[5, 6, 7]]),
    ([[5], [6, 7]], None, [[5], [6, 7]]),
    (["中文文本"], ["中文文本"], None),
])
def test_input_forms(value, texts, ids):
    got = embedding_inputs(value)
    assert (got.texts, got.ids) == (texts, ids)


@pytest.mark.parametrize("value, param, code", [
    (None, "input", "missing_required_parameter"),
    (3, "input", "invalid_type"),
    ({"text": "x"}, "input", "invalid_type"),
    ([], "input", "invalid_value"),
    ("", "input", "invalid_value"),                  # OpenAI: input "cannot be an empty string"
    (["a", ""], "input[1]", "invalid_value"),
    (["a", 3], "input[1]", "invalid_type"),
    ([1, "a"], "input[1]", "invalid_type"),
    ([1, True], "input[1]", "invalid_type"),          # a boolean is no token id
    ([[1], []], "input[1]", "invalid_value"),
    ([[1], [2, "x"]], "input[1][1]", "invalid_type"),
    ([None], "input[0]", "invalid_type"),
    ([1.5], "input[0]", "invalid_type"),
    (["a"] * (MAX_ENCODER_INPUTS + 1), "input", "invalid_value"),
])
def test_refusals_name_the_element(value, param, code):
    with pytest.raises(InputError) as e:
        embedding_inputs(value)
    assert (e.value.param, e.value.code) == (param, code), e.value.message
    assert param.split("[")[0] in e.value.message


def test_limit_is_inclusive_and_tei_allows_empty_text():
    assert len(embedding_inputs(["x"] * MAX_ENCODER_INPUTS).texts) == MAX_ENCODER_INPUTS
    assert embedding_inputs("", "inputs", allow_ids=False, allow_empty_text=True).texts == [""]
    with pytest.raises(InputError, match=r"inputs\[0\] must be a string"):
        embedding_inputs([1, 2], "inputs", allow_ids=False)


def test_fit_truncates_keeping_the_closing_token():
    ids = list(range(10))
    assert fit(ids, 10, False, "input[0]") == ids
    assert fit(ids, 4, True, "input[0]") == [0, 1, 2, 9]
    assert fit(ids, 4, True, "input[0]", left=True) == [0, 7, 8, 9]
    with pytest.raises(InputError) as e:
        fit(ids, 4, False, "input[3]")
    assert (e.value.param, e.value.code) == ("input[3]", "context_length_exceeded") and "10 tokens" in e.value.message


def test_base64_is_little_endian_float32():
    v = np.array([[1.0, -2.5, 3.25]], np.float32)
    body = openai_embeddings(v, "m", 7, "base64")
    raw = base64.b64decode(body["data"][0]["embedding"])
    np.testing.assert_array_equal(np.frombuffer(raw, "<f4"), v[0])
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert openai_embeddings(v, "m", 7, "float")["data"][0] == {"object": "embedding", "index": 0,
                                                                 "embedding": [1.0, -2.5, 3.25]}


def test_dimensions_cut_and_renormalise():
    v = np.array([[3.0, 4.0, 12.0]], np.float32) / 13
    out = cut_dimensions(v, 2, 3, True)
    np.testing.assert_allclose(out, [[0.6, 0.8]], rtol=1e-6)
    assert cut_dimensions(v, None, 3, True) is v
    with pytest.raises(InputError, match="at most this model's 3"):
        cut_dimensions(v, 4, 3, True)


def test_rerank_documents_and_order():
    query, docs, tei = rerank_documents(RerankRequest(query="q", documents=["a", {"text": "b"}]))
    assert (query, docs, tei) == ("q", ["a", "b"], False)
    assert rerank_documents(RerankRequest(query="q", texts=["a"]))[2] is True
    for body, param in (({"documents": ["a"]}, "query"), ({"query": "q"}, "documents"),
                        ({"query": "q", "documents": ["a", {"txt": 1}]}, "documents[1].text"),
                        ({"query": "q", "documents": [1]}, "documents[0]"), ({"query": "q", "documents": []}, "documents")):
        with pytest.raises(InputError) as e:
            rerank_documents(RerankRequest(**body))
        assert e.value.param == param
    scores = np.array([0.5, 2.0, -1.0, 2.0], np.float32)
    got = rerank_results(scores, ["w", "x", "y", "z"], 3, True)
    assert [r["index"] for r in got] == [1, 3, 0]  # ties keep the client's order
    assert got[0] == {"index": 1, "relevance_score": 2.0, "document": {"text": "x"}}
    assert "document" not in rerank_results(scores, ["w", "x", "y", "z"], None, False)[0]
    tei = tei_rerank_results(scores, ["w", "x", "y", "z"], None, False, True)
    assert tei[0]["score"] == pytest.approx(1 / (1 + np.exp(-2.0))) and tei[-1]["text"] == "y"
