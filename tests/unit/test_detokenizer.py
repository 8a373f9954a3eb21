"""Incremental detokenization and stop strings."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support.model_files import llama3_vocab_model, smollm2_q4_1, spm_trained_model
from sysinfer.engine.detokenizer import IncrementalDetokenizer, StopChecker
from sysinfer.model.gguf_header import read_gguf_header
from sysinfer.model.tokenizer import Tokenizer
from support.text_corpus import CHINESE, corpus

TEXTS = CHINESE + [s for s in corpus(60, seed=4) if s] + ["中文😀" * 5, "🇺🇸🇨🇳 flags", "naïve café ünïcödé"]


@pytest.fixture(scope="module", params=["llama3", "smollm2", "spm"])
def tok(request):
    path = {"llama3": llama3_vocab_model, "smollm2": smollm2_q4_1, "spm": lambda: spm_trained_model()[1]}[request.param]()
    return Tokenizer.from_metadata(read_gguf_header(path))


def stream(tok, prompt_ids, ids):
    detok = IncrementalDetokenizer(tok, prompt_ids)
    deltas = [detok.add(i) for i in ids]
    return deltas, detok.flush()


def test_deltas_concatenate_to_the_whole_decode(tok):
    prompt = tok.encode("Question: 请回答。 Answer:")
    for text in TEXTS:
        ids = tok.encode(text)
        deltas, tail = stream(tok, prompt, ids)
        whole = tok.decode(prompt + ids)[len(tok.decode(prompt)):]
        assert "".join(deltas) + tail == whole
        assert not any("\ufffd" in d for d in deltas), deltas


def test_split_characters_are_held_back(tok):
    ids = tok.encode("中文😀")
    deltas, _ = stream(tok, [], ids)
    for d in deltas:  # every delta is whole characters
        assert d == "" or d.encode("utf-8").decode("utf-8") == d
    assert "".join(deltas).endswith("😀")


def test_incomplete_final_character_is_not_sent(tok):
    ids = tok.encode("好")
    if len(ids) > 1:  # split over byte tokens
        deltas, tail = stream(tok, [], ids[:-1])
        assert "".join(deltas) + tail == ""


@settings(max_examples=200)
@given(text=st.text(min_size=0, max_size=40), cut=st.integers(1, 6))
def test_stop_strings_are_caught_across_pieces(text, cut):
    stop = "STOP"
    full = text + stop + "after"
    pieces = [full[i : i + cut] for i in range(0, len(full), cut)]
    checker = StopChecker([stop, "never-seen"])
    sent, stopped = "", False
    for piece in pieces:
        out, stopped = checker.feed(piece)
        sent += out
        if stopped:
            break
    assert stopped
    assert sent == full[: full.find(stop)]
    assert stop not in sent and checker.flush() == ""


def test_held_back_text_is_released_when_it_is_not_a_stop():
    checker = StopChecker(["</answer>"])
    assert checker.feed("a </ans") == ("a ", False)
    assert checker.feed("wer") == ("", False)
    assert checker.feed(" x") == ("</answer x", False)
    assert checker.feed("</") == ("", False)
    assert checker.flush() == "</"
