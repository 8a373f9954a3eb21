"""Byte-level BPE pre-tokenizers, by the name a GGUF gives in `tokenizer.ggml.pre`.

A pre-tokenizer cuts text into pieces before BPE merges within each piece; a model only works with the
cut it was trained with. Each entry is what the model's own `tokenizer.json` does, written as
regular expressions for the `regex` module / tiktoken:
- `normalize`: a Unicode normal form applied first (Qwen's tokenizer normalises to NFC);
- `stages`: one pattern is a tiktoken split (the matches are the pieces). Several patterns are a
  `Sequence` of isolating splits: each pattern cuts every piece of the stage before into its matches
  and the stretches between them (nothing is dropped), as DeepSeek's tokenizers do.

Names as llama.cpp's converter writes them; several names share one pre-tokenizer.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import regex


def _llama3_style(digits: str) -> str:
    """Llama 3's split (cl100k-like): contractions, letters with one leading non-letter, digit runs
    of `digits`, punctuation runs with trailing newlines, whitespace."""
    return (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}""" + digits
            + r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")


GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3_PATTERN = _llama3_style("{1,3}")
# Qwen2 / Qwen2.5 / Qwen3 (and the DeepSeek-R1 distills of Qwen): Llama 3's split with single digits.
QWEN2_PATTERN = _llama3_style("")
# SmolLM2 (HF: Digits(individual) then GPT-2's split of each stretch between digits): every digit on
# its own; digits take no leading space; a whitespace run before a digit ends a stretch, so it stays
# whole (the `(?=\p{N})` alternative).
SMOLLM_PATTERN = r"""\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?=\p{N})|\s+(?!\S)|\s+"""


def _char_class(ranges: list[tuple[int, ...]]) -> str:
    return "".join(chr(r[0]) if len(r) == 1 else f"{chr(r[0])}-{chr(r[1])}" for r in ranges)


# deepseek-llm's letters: the cased letters (Lu, Ll, Lt) of the Unicode version its tokenizer was made
# with, as explicit code points (several are ones NFC would rewrite, e.g. U+2126 OHM SIGN, so they are
# written as numbers, not characters).
_DEEPSEEK_LETTERS = _char_class([
    (0x41, 0x5A), (0x61, 0x7A), (0xB5,), (0xC0, 0xD6), (0xD8, 0xF6), (0xF8, 0x1BA), (0x1BC, 0x1BF),
    (0x1C4, 0x293), (0x295, 0x2AF), (0x370, 0x373), (0x376,), (0x377,), (0x37B, 0x37D), (0x37F,), (0x386,),
    (0x388, 0x38A), (0x38C,), (0x38E, 0x3A1), (0x3A3, 0x3F5), (0x3F7, 0x481), (0x48A, 0x52F), (0x531, 0x556),
    (0x10A0, 0x10C5), (0x13A0, 0x13F5), (0x13F8, 0x13FD), (0x1C90, 0x1CBA), (0x1CBD, 0x1CBF), (0x1D00, 0x1D2B),
    (0x1D6B, 0x1D77), (0x1D79, 0x1D9A), (0x1E00, 0x1F15), (0x1F18, 0x1F1D), (0x1F20, 0x1F45), (0x1F48, 0x1F4D),
    (0x1F50, 0x1F57), (0x1F59,), (0x1F5B,), (0x1F5D,), (0x1F5F, 0x1F7D), (0x1F80, 0x1FB4), (0x1FB6, 0x1FBC),
    (0x1FBE,), (0x1FC2, 0x1FC4), (0x1FC6, 0x1FCC), (0x1FD0, 0x1FD3), (0x1FD6, 0x1FDB), (0x1FE0, 0x1FEC),
    (0x1FF2, 0x1FF4), (0x1FF6, 0x1FFC), (0x2102,), (0x2107,), (0x210A, 0x2113), (0x2115,), (0x2119, 0x211D),
    (0x2124,), (0x2126,), (0x2128,), (0x212A, 0x212D), (0x212F, 0x2134), (0x2139,), (0x213C, 0x213F),
    (0x2145, 0x2149), (0x214E,), (0x2183,), (0x2184,), (0x2C00, 0x2C7B), (0x2C7E, 0x2CE4), (0x2CEB, 0x2CEE),
    (0x2CF2,), (0x2CF3,), (0xA640, 0xA66D), (0xA680, 0xA69B), (0xA722, 0xA76F), (0xA771, 0xA787),
    (0xA78B, 0xA78E), (0xAB70, 0xABBF), (0xFB00, 0xFB06), (0xFB13, 0xFB17), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A),
    (0x10400, 0x1044F), (0x104B0, 0x104D3), (0x104D8, 0x104FB), (0x10C80, 0x10CB2), (0x10CC0, 0x10CF2),
    (0x118A0, 0x118DF), (0x1E900, 0x1E943),
])
# ASCII and full-width punctuation and symbols, general punctuation quotes, CJK punctuation.
_DEEPSEEK_PUNCT = _char_class([(0x21, 0x2F), (0x3A, 0x7E), (0xFF01, 0xFF0F), (0xFF1A, 0xFF5E), (0x2018, 0x201F),
                               (0x3000, 0x3002)])
# CJK ideographs (U+4E00..U+9FA5), Samaritan .. CJK (U+0800..U+4E00), Hangul syllables and Jamo ext.
_DEEPSEEK_CJK = _char_class([(0x4E00, 0x9FA5), (0x800, 0x4E00), (0xAC00, 0xD7FF)])
DEEPSEEK_LLM_STAGES = (
    r"[\r\n]",
    rf"\s?[{_DEEPSEEK_LETTERS}]+",
    rf"\s?[{_DEEPSEEK_PUNCT}]+",
    r"\s+$",
    rf"[{_DEEPSEEK_CJK}]+",
    r"\p{N}+",
)

# deepseek-coder (1.3b / 6.7b / 33b): newlines, letter runs, punctuation runs, CJK, single digits.
DEEPSEEK_CODER_STAGES = (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", rf"[{_DEEPSEEK_CJK}]+", r"\p{N}")
# DeepSeek-V3 / R1 / V3.1 (and V4's tokenizer): digit groups of up to 3, CJK and kana runs, then a
# Llama-3-like split where punctuation and symbols stand apart from letters (and take one letter run).
DEEPSEEK_V3_STAGES = (
    r"\p{N}{1,3}",
    "[" + _char_class([(0x4E00, 0x9FA5), (0x3040, 0x309F), (0x30A0, 0x30FF)]) + "]+",
    r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
)


@dataclass(frozen=True)
class PreTokenizer:
    stages: tuple[str, ...]
    normalize: str | None = None  # a unicodedata normal form ("NFC"), or None

    @property
    def single(self) -> bool:
        """One pattern: tiktoken splits the text itself (the fast path)."""
        return len(self.stages) == 1

    def normalized(self, text: str) -> str:
        return unicodedata.normalize(self.normalize, text) if self.normalize else text

    def pieces(self, text: str) -> list[str]:
        """The pieces of (normalised) text after every stage, in order; joined they give the text back."""
        pieces = [text]
        for pattern in _compiled(self.stages):
            pieces = [p for piece in pieces for p in _isolate(pattern, piece)]
        return pieces


def _isolate(pattern: regex.Pattern, text: str) -> list[str]:
    """text cut at every match of pattern, matches and the stretches between them kept."""
    out, start = [], 0
    for m in pattern.finditer(text):
        if m.start() == m.end():
            continue
        if m.start() > start:
            out.append(text[start:m.start()])
        out.append(m.group())
        start = m.end()
    if start < len(text):
        out.append(text[start:])
    return out


_COMPILED: dict[tuple[str, ...], list[regex.Pattern]] = {}


def _compiled(stages: tuple[str, ...]) -> list[regex.Pattern]:
    if stages not in _COMPILED:
        _COMPILED[stages] = [regex.compile(p) for p in stages]
    return _COMPILED[stages]


_GPT2 = PreTokenizer((GPT2_PATTERN,))
_LLAMA3 = PreTokenizer((LLAMA3_PATTERN,))
_QWEN2 = PreTokenizer((QWEN2_PATTERN,), normalize="NFC")

PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": _GPT2,
    "gpt2": _GPT2,
    "llama-bpe": _LLAMA3,   # Llama 3 / 3.1 / 3.2 and the DeepSeek-R1 distills of Llama
    "llama3": _LLAMA3,
    "llama-v3": _LLAMA3,
    "smollm": PreTokenizer((SMOLLM_PATTERN,)),
    "qwen2": _QWEN2,        # Qwen2, Qwen2.5, Qwen3, Qwen3-MoE
    "deepseek-r1-qwen": _QWEN2,  # DeepSeek-R1-Distill-Qwen: Qwen2.5's tokenizer
    "deepseek-llm": PreTokenizer(DEEPSEEK_LLM_STAGES),  # deepseek-llm-7b/67b (base, chat), DeepSeek-V2(-Lite)
    "deepseek-coder": PreTokenizer(DEEPSEEK_CODER_STAGES),
    "deepseek-v3": PreTokenizer(DEEPSEEK_V3_STAGES),  # DeepSeek-V3, R1, V3.1
}


def pre_tokenizer(name: str) -> PreTokenizer | None:
    return PRE_TOKENIZERS.get(name)
