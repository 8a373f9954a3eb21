"""SentencePiece (`tokenizer.ggml.model == "llama"`: Baichuan 2, Llama 2) on the sentencepiece package.

A ModelProto is rebuilt from the GGUF's pieces, scores and token types (byte-fallback `<0x..>`
pieces, BPE model, identity normalisation as Baichuan 2 and Llama 2 ship it) and loaded in memory.
"""

from __future__ import annotations

import re
from typing import Any

import sentencepiece as spm

from .tokenizer import (TOKEN_TYPE_BYTE, TOKEN_TYPE_CONTROL, TOKEN_TYPE_NORMAL, TOKEN_TYPE_UNKNOWN,
                        TOKEN_TYPE_UNUSED, TOKEN_TYPE_USER_DEFINED, Tokenizer, TokenizerError, _meta_bool, _meta_list)
from .gguf_header import describe

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
SPACE = "\u2581"  # "▁": SentencePiece's visible space


def build_model_proto(tokens: list[str], scores: list[float], types: list[int], *, unigram: bool = False,
                      charsmap: bytes = b"", add_dummy_prefix: bool = False, remove_extra_whitespaces: bool = False) -> bytes:
    """A SentencePiece model of the GGUF's pieces: BPE (Llama 2, Baichuan 2; identity normalisation,
    the dummy prefix added by SPMTokenizer) or, with unigram, a unigram model with the file's
    normaliser (its precompiled character map, dummy prefix and whitespace squeezing: T5, XLM-R)."""
    from sentencepiece import sentencepiece_model_pb2 as pb  # needs protobuf

    kinds = {
        TOKEN_TYPE_NORMAL: pb.ModelProto.SentencePiece.NORMAL,
        TOKEN_TYPE_UNKNOWN: pb.ModelProto.SentencePiece.UNKNOWN,
        TOKEN_TYPE_CONTROL: pb.ModelProto.SentencePiece.CONTROL,
        # sentencepiece would match user-defined pieces inside any text; as control pieces they are
        # written only where Tokenizer.encode(allow_special=True) or a chat template puts them.
        TOKEN_TYPE_USER_DEFINED: pb.ModelProto.SentencePiece.CONTROL,
        TOKEN_TYPE_UNUSED: pb.ModelProto.SentencePiece.UNUSED,
        TOKEN_TYPE_BYTE: pb.ModelProto.SentencePiece.BYTE,
    }
    model = pb.ModelProto()
    has_unknown = False
    for piece, score, kind in zip(tokens, scores, types):
        if kind not in kinds:
            raise TokenizerError(f"tokenizer.ggml.token_type {describe(kind)} of piece {describe(piece)} is not a SentencePiece type")
        has_unknown |= kind == TOKEN_TYPE_UNKNOWN
        model.pieces.add(piece=piece, score=float(score), type=kinds[kind])
    if not has_unknown:
        raise TokenizerError("tokenizer.ggml.token_type marks no unknown piece (SentencePiece needs one)")
    model.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM if unigram else pb.TrainerSpec.BPE
    model.trainer_spec.byte_fallback = any(t == TOKEN_TYPE_BYTE for t in types)
    model.trainer_spec.vocab_size = len(tokens)
    # BPE: identity normalisation, the dummy prefix added by SPMTokenizer itself (first fragment only).
    model.normalizer_spec.name = "nmt_nfkc" if charsmap else "identity"
    model.normalizer_spec.precompiled_charsmap = charsmap
    model.normalizer_spec.add_dummy_prefix = add_dummy_prefix
    model.normalizer_spec.remove_extra_whitespaces = remove_extra_whitespaces
    model.normalizer_spec.escape_whitespaces = True
    return model.SerializeToString()


class SPMTokenizer(Tokenizer, kind="llama"):
    default_add_bos = True  # Llama 2 and SentencePiece files without the key

    def __init__(self, meta: dict[str, Any]):
        super().__init__(meta)
        if "tokenizer.ggml.scores" in meta:
            scores = _meta_list(meta, "tokenizer.ggml.scores", (int, float), "numbers")
        else:
            scores = [0.0] * len(self.tokens)
        if len(scores) != len(self.tokens):
            raise TokenizerError(f"tokenizer.ggml.scores ({len(scores)}) and tokenizer.ggml.tokens ({len(self.tokens)}) differ in length")
        self.add_space_prefix = _meta_bool(meta, "tokenizer.ggml.add_space_prefix", True)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(build_model_proto(self.tokens, scores, self.token_types))
        except (RuntimeError, ValueError, OverflowError) as e:  # sentencepiece refuses the pieces
            if isinstance(e, TokenizerError):
                raise
            raise TokenizerError(f"SentencePiece refused the vocabulary in tokenizer.ggml.tokens: {describe(str(e))}") from None
        self._bytes = [self._piece_bytes(p, k) for p, k in zip(self.tokens, self.token_types)]

    @staticmethod
    def _piece_bytes(piece: str, kind: int) -> bytes:
        if kind == TOKEN_TYPE_BYTE:
            m = _BYTE_PIECE.fullmatch(piece)
            if m:
                return bytes([int(m.group(1), 16)])
        if kind in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_UNKNOWN):
            return piece.encode("utf-8") if kind == TOKEN_TYPE_CONTROL else b""
        return piece.replace(SPACE, " ").encode("utf-8")

    def _encode_plain(self, text: str, first: bool) -> list[int]:
        if first and self.add_space_prefix:
            text = " " + text
        return self._sp.EncodeAsIds(text)

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id]

    def decode(self, ids, *, skip_special: bool = False) -> str:
        text = super().decode(ids, skip_special=skip_special)
        # SentencePiece drops the space its dummy prefix put before the first piece.
        if self.add_space_prefix and text.startswith(" ") and ids and not self.is_special(ids[0]):
            text = text[1:]
        return text
