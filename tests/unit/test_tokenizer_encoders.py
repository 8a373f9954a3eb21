"""The tokenizers of encoder models (issue 26), built from GGUF metadata, against the `tokenizers`
library: WordPiece with all-MiniLM-L6-v2's real vocabulary (tokenizer.ggml.model bert), and the
SentencePiece unigram vocabulary XLM-RoBERTa files (bge-m3) carry (tokenizer.ggml.model t5), from a
unigram model trained here with NFKC normalisation (checked against sentencepiece itself too)."""

from __future__ import annotations

import pytest
import sentencepiece as spm
from pathlib import Path

from tokenizers import Regex
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, normalizers, pre_tokenizers

from support.model_files import bert_vocab_model, minilm_tokenizer_json, unigram_trained_model
from sysinfer.model.gguf_header import read_gguf_header
from sysinfer.model.model_file import ModelLoadError
from sysinfer.model.tokenizer import Tokenizer
from support.text_corpus import CHINESE, corpus

ENCODER_CASES = [
    # accents, case, compatibility forms (NFKC for the unigram model), full-width text
    "Crème Brûlée À LA CARTE", "ÅNGSTRÖM naïve Ωmega", "ﬁnancial ①②③ ㈱ ＡＢＣ１２３", "Ｈｅｌｌｏ，ｗｏｒｌｄ！",
    # CJK, mixed with Latin and digits
    "检索增强生成（RAG）需要向量。", "bge-m3支持100多种语言", "東京タワーは333メートル", "한국어 문장입니다.",
    # punctuation runs, symbols, URLs, code
    "Wait... what?!? (yes) [no] {maybe}", "$100 + 50% = ~150 <approx> | a^b `code` @user #tag",
    "https://example.com/path?q=1&r=2#frag", "def f(x): return x**2  # square",
    # whitespace runs and control characters
    "  leading", "trailing   ", "a \t\n b\r\n\r\nc", "tab\tseparated\tvalues", "zero\u200bwidth\u00a0nbsp\u3000ideo",
    "bell\x07and\x00nul\ufffdreplacement", "\u2028line\u2029para",
    # a word past 100 characters, an unknown character
    "x" * 101, "supercalifragilisticexpialidocious" * 3, "🦜 parrot 🦜🦜",
    # special-token text
    "[CLS] query [SEP] passage [SEP]", "<s> text </s> <mask>", "[MASK] fills [UNK]",
]
STRINGS = corpus() + CHINESE + ENCODER_CASES


# ---- WordPiece ----

@pytest.fixture(scope="module")
def bert():
    oracle = HFTokenizer.from_file(minilm_tokenizer_json())
    oracle.no_padding()  # the file pads and cuts to 128 for sentence-transformers
    oracle.no_truncation()
    return Tokenizer.from_metadata(read_gguf_header(bert_vocab_model())), oracle


def test_wordpiece_ids_equal_tokenizers_library(bert):
    ours, oracle = bert
    mismatches = []
    for s in STRINGS:
        expected = oracle.encode(s, add_special_tokens=False).ids
        if ours.encode(s, allow_special=True) != expected:
            mismatches.append((s, ours.encode(s, allow_special=True), expected))
    assert not mismatches, f"{len(mismatches)} of {len(STRINGS)} differ, first: {mismatches[:3]}"


def test_wordpiece_model_input_is_cls_text_sep(bert):
    ours, oracle = bert
    for s in ENCODER_CASES[:10] + CHINESE:
        assert ours.encode_input(s) == oracle.encode(s).ids  # [CLS] ... [SEP], as the post-processor adds them
    assert ours.encode_input("")[0] == 101 and ours.encode_input("")[-1] == 102


def test_wordpiece_pieces_and_decode(bert):
    ours, _ = bert
    ids = ours.encode("Tokenization unaffable 京")
    assert [ours.token_text(i) for i in ids] == ["▁token", "ization", "▁una", "ffa", "ble", "▁京"]  # phantom-space pieces
    assert ours.decode(ids) == "tokenization unaffable 京"
    assert ours.decode(ours.encode("Hello, World!")) == "hello , world !"
    assert ours.encode("东") == [ours.unknown_id]  # not in this English vocabulary
    assert not any(ours.is_special(i) for i in ours.encode("[CLS] [SEP] [MASK]"))  # typed: text


# ---- unigram (XLM-R layout) ----

@pytest.fixture(scope="module")
def unigram():
    model, gguf_path = unigram_trained_model()
    return Tokenizer.from_metadata(read_gguf_header(gguf_path)), model


def _xlmr_ids(spm_ids: list[int]) -> list[int]:
    """SentencePiece's ids in XLM-R's order: <unk> is 3, every piece one place up."""
    return [3 if i == 0 else i + 1 for i in spm_ids]


def test_unigram_ids_equal_sentencepiece(unigram):
    ours, model = unigram
    sp = spm.SentencePieceProcessor(model_file=model)
    mismatches = [(s, ours.encode(s), _xlmr_ids(sp.encode(s))) for s in STRINGS if ours.encode(s) != _xlmr_ids(sp.encode(s))]
    assert not mismatches, f"{len(mismatches)} of {len(STRINGS)} differ, first: {mismatches[:3]}"


def _hf_unigram(model: str) -> HFTokenizer:
    """`tokenizers` built from the same SentencePiece model as transformers' converter builds XLM-R's
    tokenizer.json: Precompiled normaliser then runs of spaces squeezed, Metaspace, Unigram model."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(Path(model).read_bytes())
    vocab = [(p.piece, p.score) for p in proto.pieces]
    unk = next(i for i, p in enumerate(proto.pieces) if p.type == pb.ModelProto.SentencePiece.UNKNOWN)
    hf = HFTokenizer(models.Unigram(vocab, unk, byte_fallback=False))
    hf.normalizer = normalizers.Sequence([normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap),
                                          normalizers.Replace(Regex(" {2,}"), " ")])
    hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    return hf


def test_unigram_ids_equal_tokenizers_library(unigram):
    """Equal but for one documented difference: text ending in whitespace. SentencePiece (which the
    model was trained with) and llama.cpp drop trailing whitespace (remove_extra_whitespaces), the
    `tokenizers` pipeline keeps one final `▁` piece for it; we follow SentencePiece."""
    ours, model = unigram
    oracle = _hf_unigram(model)
    space = ours.tokens.index("\u2581")
    mismatches, trailing = [], 0
    for s in STRINGS:
        if any(t in s for t in ("<s>", "</s>", "<unk>", "<mask>")):
            continue  # special-token text: compared with allow_special below
        expected, got = _xlmr_ids(oracle.encode(s).ids), ours.encode(s)
        if got != expected:
            if expected == got + [space] and s.rstrip(" \t\r\n\u3000\u2581") != s:
                trailing += 1
            else:
                mismatches.append((s, got, expected))
    assert not mismatches, f"{len(mismatches)} of {len(STRINGS)} differ, first: {mismatches[:3]}"
    assert trailing < len(STRINGS) // 4


def test_unigram_model_input_and_specials(unigram):
    ours, model = unigram
    sp = spm.SentencePieceProcessor(model_file=model)
    assert ours.encode_input("Hello world") == [0] + _xlmr_ids(sp.encode("Hello world")) + [2]  # <s> ... </s>
    assert ours.encode("<s>x</s>", allow_special=True) == [0] + _xlmr_ids(sp.encode("x")) + [2]
    assert 0 not in ours.encode("<s>") and ours.decode(ours.encode("Hello world")) == "Hello world"
    assert ours.decode(ours.encode("ﬁnancial ①")) == "financial 1"  # NFKC, as the model normalises


def test_unigram_bad_charsmap_is_a_load_error(unigram):
    _, gguf_path = unigram_trained_model()
    meta = read_gguf_header(gguf_path)
    for bad in ("nfkc", [1.5, 2.5], [300, 1]):
        with pytest.raises(ModelLoadError, match="precompiled_charsmap"):
            Tokenizer.from_metadata({**meta, "tokenizer.ggml.precompiled_charsmap": bad})


@pytest.mark.parametrize("change, reason", [
    ({"tokenizer.ggml.token_type": "drop [UNK]"}, "unknown token"),
    ({"tokenizer.ggml.cls_token_id": 10**6}, "cls_token_id"),
])
def test_bad_wordpiece_metadata_is_a_load_error(bert, change, reason):
    meta = read_gguf_header(bert_vocab_model())
    if change.get("tokenizer.ggml.token_type") == "drop [UNK]":
        tokens = list(meta["tokenizer.ggml.tokens"])
        tokens[tokens.index("[UNK]")] = "[NOT-UNK]"
        change = {"tokenizer.ggml.tokens": tokens}
        meta.pop("tokenizer.ggml.unknown_token_id")
    with pytest.raises(ModelLoadError, match=reason):
        Tokenizer.from_metadata({**meta, **change})


def test_bad_unigram_metadata_is_a_load_error(unigram):
    meta = read_gguf_header(unigram_trained_model()[1])
    no_unknown = [1 if t == 2 else t for t in meta["tokenizer.ggml.token_type"]]
    for change, reason in (({"tokenizer.ggml.scores": meta["tokenizer.ggml.scores"][:-1]}, "differ in length"),
                           ({"tokenizer.ggml.token_type": no_unknown}, "unknown piece"),
                           ({"tokenizer.ggml.scores": None}, "tokenizer.ggml.scores")):
        with pytest.raises(ModelLoadError, match=reason):
            Tokenizer.from_metadata({**meta, **change})
