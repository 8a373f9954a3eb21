"""Byte-level BPE tokenizers built from GGUF metadata, against the `tokenizers` library."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer as HFTokenizer

from support.model_files import llama3_vocab_model, smollm2_hf_tokenizer, smollm2_q4_1
from sysinfer.model.gguf_header import read_gguf_header
from sysinfer.model.hf_tokenizer import llama3_tokenizer_json
from sysinfer.model.tokenizer import Tokenizer
from support.text_corpus import CHINESE, corpus

STRINGS = corpus()


@pytest.fixture(scope="module")
def llama3():
    return Tokenizer.from_metadata(read_gguf_header(llama3_vocab_model())), HFTokenizer.from_file(llama3_tokenizer_json())


@pytest.fixture(scope="module")
def smollm2():
    return Tokenizer.from_metadata(read_gguf_header(smollm2_q4_1())), smollm2_hf_tokenizer()


def test_corpus_is_big_enough():
    assert len(STRINGS) >= 300


@pytest.mark.parametrize("name", ["llama3", "smollm2"])
def test_ids_equal_tokenizers_library(name, request):
    ours, oracle = request.getfixturevalue(name)
    mismatches = []
    for s in STRINGS:
        # The oracle always turns special-token text into specials: compare with them allowed.
        expected = oracle.encode(s, add_special_tokens=False).ids
        got = ours.encode(s, allow_special=True)
        if got != expected:
            mismatches.append((s, got, expected))
    assert not mismatches, f"{len(mismatches)} of {len(STRINGS)} differ, first: {mismatches[:3]}"


@pytest.mark.parametrize("name", ["llama3", "smollm2"])
def test_round_trip(name, request):
    ours, _ = request.getfixturevalue(name)
    for s in STRINGS + CHINESE:
        assert ours.decode(ours.encode(s)) == s
        assert ours.decode(ours.encode(s, allow_special=True)) == s


@pytest.mark.parametrize("name", ["llama3", "smollm2"])
def test_user_text_never_becomes_special_tokens(name, request):
    ours, _ = request.getfixturevalue(name)
    for s in STRINGS:
        ids = ours.encode(s)  # specials disabled: the default for anything a user typed
        assert not any(ours.is_special(i) for i in ids), s


def test_llama3_specials_and_stops(llama3):
    tok, _ = llama3
    assert tok.encode("<|start_header_id|>", allow_special=True) == [128006]
    assert tok.bos_id == 128000 and tok.add_bos
    assert {128001, 128009} <= tok.stop_ids  # <|end_of_text|>, <|eot_id|>
    assert tok.encode("hi", add_bos=True)[0] == 128000


def test_smollm2_specials_and_stops(smollm2):
    tok, _ = smollm2
    assert tok.encode("<|im_start|>", allow_special=True) == [1]
    assert 2 in tok.stop_ids and not tok.add_bos
    assert [tok.token_text(i) for i in tok.encode("a 12 b")] == ["a", "Ġ", "1", "2", "Ġb"]  # digits alone


def test_unsupported_pre_tokenizer_names_the_key():
    meta = read_gguf_header(smollm2_q4_1())
    meta["tokenizer.ggml.pre"] = "no-such-pre"
    with pytest.raises(ValueError, match="tokenizer.ggml.pre"):
        Tokenizer.from_metadata(meta)
