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


def test_placeholder_bpe_vocabulary_has_merges_and_round_trips(tmp_path):
    """synth's BPE placeholder (deepseek-llm's shape: no package carries its vocabulary) has the real
    layout, pieces then BOS / EOS then padding, and a merge for every piece past the 256 byte
    characters, which llama.cpp requires of a BPE file ("cannot find tokenizer merges in model file"
    was its answer to the earlier placeholder); any text round-trips through our tokenizer."""
    from gguf import GGMLQuantizationType as QT

    from sysinfer.model.synth import SynthSpec, placeholder_bpe_tokenizer, write_synthetic_gguf

    meta_in = placeholder_bpe_tokenizer(70000, "deepseek-llm", 69000, ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"])
    tokens, merges = meta_in["tokenizer.ggml.tokens"], meta_in["tokenizer.ggml.merges"]
    assert len(tokens) == len(set(tokens)) == 70000 and len(merges) == 69000 - 256
    assert all(left + right in set(tokens[:69000]) for left, right in (m.split(" ") for m in merges[::997]))
    assert tokens[69000] == "<｜begin▁of▁sentence｜>" and meta_in["tokenizer.ggml.bos_token_id"] == 69000
    assert meta_in["tokenizer.ggml.eos_token_id"] == 69001 and meta_in["tokenizer.ggml.token_type"][-1] == 5
    spec = SynthSpec(arch="llama", n_layer=1, n_embd=64, n_head=2, n_head_kv=2, n_ff=128, n_vocab=70000,
                     output_type=QT.Q8_0, metadata=meta_in)
    path = tmp_path / "bpe-placeholder.gguf"
    write_synthetic_gguf(str(path), spec)
    meta = read_gguf_header(str(path))
    assert meta["tokenizer.ggml.pre"] == "deepseek-llm" and len(meta["tokenizer.ggml.merges"]) == 69000 - 256
    tok = Tokenizer.from_metadata(meta)
    for text in ["Hello world, 123\n", "问题：你好？", "def f(x):\n\treturn x"]:
        ids = tok.encode(text)
        assert ids and all(0 <= i < 69000 for i in ids)
        assert tok.decode(ids) == text
    assert len(tok.encode("aaaa")) < 4  # merged pieces are used, not bytes alone
    with pytest.raises(ValueError, match="bad layout"):
        placeholder_bpe_tokenizer(300, "default", 200, ["<s>", "</s>"])
