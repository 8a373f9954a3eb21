"""SentencePiece unigram (`tokenizer.ggml.model == "t5"`: XLM-RoBERTa as bge-m3 and bge-reranker-v2-m3
store it, T5) from GGUF metadata, on the sentencepiece package.

The file carries the pieces in the model's own id order (XLM-R's: `<s> <pad> </s> <unk>` first, then
SentencePiece's pieces one place up), their scores and types, and the normaliser: the precompiled
character map (NFKC-like), whether to squeeze whitespace and whether to prepend a space. A unigram
ModelProto of exactly that is built and loaded in memory, so SentencePiece returns the file's ids.
Each stretch of text between special tokens is encoded on its own, with its own leading space, as
XLM-R's tokenizers do.
"""

from __future__ import annotations

from typing import Any

import sentencepiece as spm

from .gguf_header import describe
from .spm_tokenizer import SPACE, SPMTokenizer, build_model_proto
from .tokenizer import TOKEN_TYPE_UNKNOWN, TokenizerError, _meta_bool, _meta_list


def _charsmap(meta: dict[str, Any]) -> bytes:
    value = meta.get("tokenizer.ggml.precompiled_charsmap")
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        try:
            return bytes(v & 0xFF if v < 0 else v for v in value)  # int8 arrays hold the same bytes
        except ValueError:
            pass
    raise TokenizerError(f"tokenizer.ggml.precompiled_charsmap must be an array of bytes, got {describe(value)}")


class UnigramTokenizer(SPMTokenizer, kind="t5"):
    default_add_bos = True  # XLM-R: <s> text </s>

    def __init__(self, meta: dict[str, Any]):
        super(SPMTokenizer, self).__init__(meta)  # the common part only: the model differs from SPMTokenizer's
        scores = _meta_list(meta, "tokenizer.ggml.scores", (int, float), "numbers")
        if len(scores) != len(self.tokens):
            raise TokenizerError(f"tokenizer.ggml.scores ({len(scores)}) and tokenizer.ggml.tokens ({len(self.tokens)}) differ in length")
        self.add_space_prefix = _meta_bool(meta, "tokenizer.ggml.add_space_prefix", True)
        self.add_eos = _meta_bool(meta, "tokenizer.ggml.add_eos_token", True)
        proto = build_model_proto(self.tokens, scores, self.token_types, unigram=True, charsmap=_charsmap(meta),
                                  add_dummy_prefix=self.add_space_prefix,
                                  remove_extra_whitespaces=_meta_bool(meta, "tokenizer.ggml.remove_extra_whitespaces", True))
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(proto)
        except (RuntimeError, ValueError, OverflowError) as e:  # sentencepiece refuses the pieces or the map
            raise TokenizerError(f"SentencePiece refused the unigram vocabulary or tokenizer.ggml.precompiled_charsmap: "
                                 f"{describe(str(e))}") from None
        self._bytes = [self._piece_bytes(p, k) for p, k in zip(self.tokens, self.token_types)]
        self.unknown_id = next(i for i, k in enumerate(self.token_types) if k == TOKEN_TYPE_UNKNOWN)

    def _encode_plain(self, text: str, first: bool) -> list[int]:
        return self._sp.EncodeAsIds(text)  # the proto's normaliser adds the space and squeezes whitespace

    def encode_input(self, text: str) -> list[int]:
        """The ids an XLM-R encoder takes: <s> text </s> (special-token text in it stays text)."""
        ids = self.encode(text, add_bos=self.add_bos)
        return ids + [self.eos_id] if self.add_eos and self.eos_id is not None else ids

    def decode(self, ids, *, skip_special: bool = False) -> str:
        text = super(SPMTokenizer, self).decode(ids, skip_special=skip_special)
        return text[1:] if self.add_space_prefix and text.startswith(" ") else text


__all__ = ["SPACE", "UnigramTokenizer"]
