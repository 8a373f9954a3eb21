"""WordPiece (`tokenizer.ggml.model == "bert"`: BERT, MiniLM, bge-small-en ...) from GGUF metadata.

The converter stores BERT's vocabulary with a "phantom space": a word-initial piece `x` as `▁x`, a
continuation `##x` as `x`, control tokens (`[CLS]`, `[SEP]`, ...) as they are. Encoding is BERT's
uncased pipeline, as Hugging Face's BertNormalizer + BertPreTokenizer + WordPiece do it:
- clean: drop NUL, U+FFFD and control characters, every whitespace character becomes a space;
- CJK ideographs become words of their own; accents stripped (NFD, combining marks dropped) and text
  lowercased when the model is uncased (the only kind llama.cpp converts);
- words split at whitespace, every punctuation character a word of its own;
- each word: greedy longest-match-first pieces; a word with no match (or over 100 characters) is [UNK].
"""

from __future__ import annotations

import unicodedata
from typing import Any

import regex

from .tokenizer import TOKEN_TYPE_CONTROL, Tokenizer, TokenizerError

SPACE = "\u2581"
MAX_WORD_CHARS = 100  # longer words are [UNK] whole, as BERT's tokenizer does
# CJK Unified Ideographs and their extensions, compatibility ideographs: BERT's "Chinese characters".
_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
        (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
# Rust's char::is_whitespace (the White_Space property), which Hugging Face's BERT pipeline uses.
_WHITESPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
                        "\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


_CJK_CLASS = "".join(f"{chr(a)}-{chr(b)}" for a, b in _CJK)
# The whole pipeline as C-speed regular expressions (the `regex` module has the Unicode classes):
_DROP = regex.compile(r"[\x00\ufffd]|(?![\t\n\r])\p{C}")   # NUL, U+FFFD, control/format/unassigned
_SPACES = regex.compile("[" + "".join(sorted(_WHITESPACE)) + "]")
_CJK_CHAR = regex.compile(f"([{_CJK_CLASS}])")
_MARKS = regex.compile(r"\p{Mn}")
# ASCII punctuation and symbols (BERT counts $ + < = > ^ ` | ~ too) and every Unicode punctuation
_PUNCT = r"!-/:-@\[-`{-~\p{P}"
_WORD = regex.compile(f"[{_PUNCT}]|[^{_PUNCT}" + "".join(sorted(_WHITESPACE)) + "]+")


def normalize(text: str, lowercase: bool = True) -> str:
    """BertNormalizer: clean, CJK padding, accents stripped and lowercased (uncased models)."""
    text = _SPACES.sub(" ", _DROP.sub("", text))
    text = _CJK_CHAR.sub(r" \1 ", text)
    if lowercase:
        text = _MARKS.sub("", unicodedata.normalize("NFD", text)).lower()
    return text


def words(text: str) -> list[str]:
    """BertPreTokenizer: whitespace-separated words, each punctuation character alone."""
    return _WORD.findall(text)


class WordPieceTokenizer(Tokenizer, kind="bert"):
    def __init__(self, meta: dict[str, Any]):
        super().__init__(meta)
        self.lowercase = True  # GGUF has no key for it: llama.cpp's converter and tokenizer assume uncased BERTs
        self._first: dict[str, int] = {}  # word-initial pieces (stored `▁x`) by text
        self._next: dict[str, int] = {}   # continuation pieces (BERT's `##x`) by text
        for i, (text, kind) in enumerate(zip(self.tokens, self.token_types)):
            if kind == TOKEN_TYPE_CONTROL:
                continue
            if text.startswith(SPACE):
                self._first.setdefault(text[1:], i)
            else:
                self._next.setdefault(text, i)
        self.unknown_id = self._optional_id(meta, "tokenizer.ggml.unknown_token_id")
        if self.unknown_id is None:
            self.unknown_id = self.special_tokens.get("[UNK]")
        if self.unknown_id is None:
            raise TokenizerError("a WordPiece vocabulary needs an unknown token (tokenizer.ggml.unknown_token_id or [UNK])")
        # [CLS] text [SEP]: what a BERT encoder is given (the file's bos / separator, else the names)
        self.cls_id = self._special_id(meta, ("tokenizer.ggml.cls_token_id", "tokenizer.ggml.bos_token_id"), "[CLS]")
        self.sep_id = self._special_id(meta, ("tokenizer.ggml.seperator_token_id", "tokenizer.ggml.eos_token_id"), "[SEP]")
        self._bytes = [self._piece_bytes(t, k) for t, k in zip(self.tokens, self.token_types)]

    def _special_id(self, meta: dict[str, Any], keys: tuple[str, ...], name: str) -> int:
        for key in keys:
            value = self._optional_id(meta, key)
            if value is not None:
                return value
        if name in self.special_tokens:
            return self.special_tokens[name]
        raise TokenizerError(f"the WordPiece vocabulary has no {name} token ({' or '.join(keys)})")

    @staticmethod
    def _piece_bytes(text: str, kind: int) -> bytes:
        if kind == TOKEN_TYPE_CONTROL:
            return text.encode("utf-8")
        return (" " + text[1:] if text.startswith(SPACE) else text).encode("utf-8")

    def _word_ids(self, word: str) -> list[int]:
        if len(word) > MAX_WORD_CHARS:
            return [self.unknown_id]
        ids, start = [], 0
        while start < len(word):
            table = self._first if start == 0 else self._next
            for end in range(len(word), start, -1):
                piece = table.get(word[start:end])
                if piece is not None:
                    ids.append(piece)
                    start = end
                    break
            else:
                return [self.unknown_id]  # one unmatched stretch makes the whole word unknown
        return ids

    def _encode_plain(self, text: str, first: bool) -> list[int]:
        return [i for w in words(normalize(text, self.lowercase)) for i in self._word_ids(w)]

    def encode_input(self, text: str) -> list[int]:
        """The ids a BERT encoder takes: [CLS] text [SEP] (special-token text in it stays text)."""
        return [self.cls_id] + self.encode(text) + [self.sep_id]

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id]

    def decode(self, ids, *, skip_special: bool = False) -> str:
        text = super().decode(ids, skip_special=skip_special)
        return text[1:] if text.startswith(" ") else text

