"""SentencePiece tokenizer rebuilt from GGUF pieces, against sentencepiece on the original model."""

from __future__ import annotations

import pytest
import sentencepiece as spm

from support.model_files import spm_trained_model
from sysinfer.model.gguf_header import read_gguf_header
from sysinfer.model.tokenizer import Tokenizer
from support.text_corpus import CHINESE, corpus

STRINGS = [s for s in corpus(n_random=300, seed=1) if s.strip()] + CHINESE


@pytest.fixture(scope="module")
def pair():
    model_file, gguf_path = spm_trained_model()
    return Tokenizer.from_metadata(read_gguf_header(gguf_path)), spm.SentencePieceProcessor(model_file=model_file)


def test_ids_equal_sentencepiece(pair):
    """Plain text (control-token lookalikes such as <s> included: sentencepiece never matches those)
    with our default encoding; text holding the user-defined <reserved_10x> pieces, which
    sentencepiece matches anywhere, with specials allowed (user text never gets them, see below)."""
    ours, sp = pair
    reserved = ("<reserved_106>", "<reserved_107>")
    strings = STRINGS + ["问题<reserved_106>回答<reserved_107>好的", "a <reserved_106> b", "<s> x </s>"]
    bad = []
    for s in strings:
        if s.startswith(reserved):
            continue  # sentencepiece puts its dummy-prefix space before a leading piece; we follow
            # llama.cpp and prefix only text that starts the input (chat templates start with them)
        got = ours.encode(s, allow_special=any(r in s for r in reserved))
        if got != sp.encode(s):
            bad.append((s, got, sp.encode(s)))
    assert not bad, f"{len(bad)} of {len(strings)} differ, first: {bad[:3]}"


def test_decoded_text_equals_sentencepiece(pair):
    ours, sp = pair
    for s in STRINGS:
        ids = sp.encode(s)
        assert ours.decode(ids) == sp.decode(ids), s


def test_byte_fallback_is_exercised(pair):
    ours, sp = pair
    ids = ours.encode("罕见字：龘靐齉")  # characters outside the trained pieces
    assert any(sp.is_byte(i) for i in ids)
    assert ours.decode(ids) == "罕见字：龘靐齉"


def test_round_trip(pair):
    ours, sp = pair
    for s in STRINGS:
        if "\u2581" in s:  # SentencePiece's own space symbol: sentencepiece can't round-trip it either
            assert sp.decode(sp.encode(s)) != s
            continue
        assert ours.decode(ours.encode(s)) == s


def test_reserved_tokens_only_when_allowed(pair):
    ours, _ = pair
    assert ours.encode("<reserved_106>", allow_special=True) == [ours.special_tokens["<reserved_106>"]]
    assert ours.special_tokens["<reserved_106>"] not in ours.encode("<reserved_106>")
    assert ours.add_bos and ours.bos_id == 1 and 2 in ours.stop_ids


def test_placeholder_vocabulary_of_synthesized_baichuan_shapes(tmp_path):
    """`synth --like baichuan2-*` carries a made-up SPM vocabulary laid out as real SPM files (so
    llama.cpp loads the file for side-by-side runs): it must be a pure "llama" tokenizer (no stray
    gpt2 keys), with byte tokens that make any text round-trip through byte fallback."""
    from gguf import GGMLQuantizationType as QT

    from sysinfer.model.synth import SynthSpec, placeholder_spm_tokenizer, write_synthetic_gguf

    spec = SynthSpec(arch="baichuan", n_layer=1, n_embd=64, n_head=2, n_head_kv=2, n_ff=128, n_vocab=600,
                     output_type=QT.Q8_0, metadata=placeholder_spm_tokenizer(600))
    path = tmp_path / "baichuan-placeholder.gguf"
    write_synthetic_gguf(str(path), spec)
    meta = read_gguf_header(str(path))
    assert meta["tokenizer.ggml.model"] == "llama" and "tokenizer.ggml.merges" not in meta
    assert len(meta["tokenizer.ggml.tokens"]) == 600 and meta["tokenizer.ggml.tokens"][3 + 0x0A] == "<0x0A>"
    assert list(meta["tokenizer.ggml.token_type"][3:259]) == [6] * 256
    tok = Tokenizer.from_metadata(meta)
    for text in ["hello world\n", "问题：你好？", "\t  x"]:
        ids = tok.encode(text)
        assert ids and all(0 <= i < 600 for i in ids)
        assert tok.decode(ids) == text
    with pytest.raises(ValueError, match="259"):
        placeholder_spm_tokenizer(100)
