"""Byte-level BPE (`tokenizer.ggml.model == "gpt2"`: Llama 3, SmolLM2, GPT-2) on tiktoken.

tiktoken merges the adjacent pair whose joined bytes have the lowest rank, and returns ranks as ids.
GGUF gives the merge order separately from the ids, so we rank every token by when a merge creates
it (single bytes first) and map tiktoken's ranks back to the file's ids with one lookup table.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import tiktoken

from .gguf_header import describe
from .pretokenizers import PRE_TOKENIZERS, pre_tokenizer
from .tokenizer import TOKEN_TYPE_CONTROL, TOKEN_TYPE_UNUSED, TOKEN_TYPE_USER_DEFINED, Tokenizer, TokenizerError, _meta_list, _meta_str

@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character of each byte, reversed (char -> byte)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


@lru_cache(maxsize=1)
def _byte_table() -> dict[int, int | str]:
    """str.translate table: each stand-in character -> the byte it stands for (as a code point < 256);
    the characters below 256 that stand for nothing -> U+FFFE, so latin-1 encoding refuses them."""
    table: dict[int, int | str] = {ord(c): b for c, b in byte_decoder().items()}
    for i in range(256):
        table.setdefault(i, "\ufffe")
    return table


def token_string_bytes(token: str) -> bytes | None:
    """A byte-level token's bytes, or None if it isn't byte-level text (e.g. a special token)."""
    try:  # one C-level pass (a vocabulary has 10^5 tokens and twice as many merge halves)
        return token.translate(_byte_table()).encode("latin-1")
    except UnicodeEncodeError:
        return None


class BPETokenizer(Tokenizer, kind="gpt2"):
    def __init__(self, meta: dict[str, Any]):
        super().__init__(meta)
        self.unknown_id = self._optional_id(meta, "tokenizer.ggml.unknown_token_id")
        pre = _meta_str(meta, "tokenizer.ggml.pre", "default")
        self.pre_tokenizer = pre_tokenizer(pre)
        if self.pre_tokenizer is None:  # another split would tokenize every prompt differently from training
            raise TokenizerError(f"tokenizer.ggml.pre = {describe(pre)} is not supported "
                                 f"(supported: {', '.join(sorted(PRE_TOKENIZERS))})")
        merges = _meta_list(meta, "tokenizer.ggml.merges", str, "strings") if meta.get("tokenizer.ggml.merges") else []
        self._bytes: list[bytes] = []
        for i, (text, kind) in enumerate(zip(self.tokens, self.token_types)):
            raw = None if kind in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED) else token_string_bytes(text)
            self._bytes.append(raw if raw is not None else text.encode("utf-8"))
        ranks, rank_to_id = self._ranks(merges)
        self._rank_to_id = np.asarray(rank_to_id, dtype=np.int64)
        # One-pattern pre-tokenizers split inside tiktoken; a sequence of splits is done by
        # PreTokenizer.pieces and tiktoken only merges within each piece (its pattern then unused).
        self._encoding = tiktoken.Encoding(
            name=f"gguf-{pre}", pat_str=self.pre_tokenizer.stages[0], mergeable_ranks=ranks, special_tokens={}
        )

    def _ranks(self, merges: list[str]) -> tuple[dict[bytes, int], list[int]]:
        """Merge-order ranks: the 256 single bytes, then each merge's result in file order, then any
        remaining normal token (reachable only whole)."""
        id_of = {}
        for i, (raw, kind) in enumerate(zip(self._bytes, self.token_types)):
            # specials are written whole by templates; unused ids (Qwen's `[PAD151669]` padding) never
            if kind not in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED, TOKEN_TYPE_UNUSED):
                id_of.setdefault(raw, i)
        ranks: dict[bytes, int] = {}
        rank_to_id: list[int] = []

        def add(raw: bytes, token_id: int | None = None) -> None:
            if raw not in ranks and (token_id is not None or raw in id_of):
                ranks[raw] = len(rank_to_id)
                rank_to_id.append(id_of.get(raw, token_id))

        # tiktoken needs every single byte; a vocabulary without some (SmolLM2 lacks a few control
        # bytes) can't express them, so they map to the unknown token, or are dropped (-1).
        for b in range(256):
            add(bytes([b]), self.unknown_id if self.unknown_id is not None else -1)
        for m in merges:
            left, _, right = m.partition(" ")
            a, b = token_string_bytes(left), token_string_bytes(right)
            if a is None or b is None:
                raise TokenizerError(f"tokenizer.ggml.merges entry {describe(m)} is not byte-level text")
            add(a + b)
        for raw in id_of:
            add(raw)
        return ranks, rank_to_id

    def _encode_plain(self, text: str, first: bool) -> list[int]:
        pre = self.pre_tokenizer
        text = pre.normalized(text)
        if pre.single:
            ranks = self._encoding.encode_ordinary(text)
        else:
            ranks = [r for piece in pre.pieces(text) for r in self._encoding._encode_single_piece(piece)]
        if not ranks:
            return []
        ids = self._rank_to_id[ranks]
        return ids[ids >= 0].tolist()

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id]
