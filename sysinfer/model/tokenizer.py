"""Tokenizers built from GGUF metadata alone, behind one interface.

`tokenizer.ggml.model == "gpt2"`: byte-level BPE (Llama 3, SmolLM2) on tiktoken (bpe_tokenizer.py).
`tokenizer.ggml.model == "llama"`: SentencePiece (Baichuan 2, Llama 2) on sentencepiece (spm_tokenizer.py).
`tokenizer.ggml.model == "bert"`: WordPiece (BERT encoders; wordpiece_tokenizer.py).
`tokenizer.ggml.model == "t5"`: SentencePiece unigram (XLM-RoBERTa: bge-m3; unigram_tokenizer.py).

Special tokens (token types 3 = control, 4 = user-defined) become single ids only where a chat
template wrote them or the caller allows it; text typed by a user is always encoded with specials
disabled, so nobody can forge a turn by typing `<|im_start|>`.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Any

from .model_file import ModelLoadError
from .gguf_header import describe

TOKEN_TYPE_NORMAL, TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED = 1, 2, 3, 4
TOKEN_TYPE_UNUSED, TOKEN_TYPE_BYTE = 5, 6
# Tokens a chat model ends its turn with, besides the file's eos.
END_OF_TURN_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end_of_text|>", "<|endoftext|>", "<|end|>", "</s>")


class TokenizerError(ModelLoadError, ValueError):
    """Metadata that can't make a tokenizer; the message names the key. A ModelLoadError (the file
    can't be served) and, as before, a ValueError."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _meta_list(meta: dict[str, Any], key: str, elem: Any = None, elem_name: str = "") -> list:
    """The non-empty array under key, every element of type elem (when given)."""
    value = meta.get(key)
    if not isinstance(value, list) or not value:
        raise TokenizerError(f"tokenizer metadata {key!r} is missing or empty (got {describe(value)})")
    if elem is not None:
        check = _is_int if elem is int else (lambda v: isinstance(v, elem) and not isinstance(v, bool))
        for i, v in enumerate(value):
            if not check(v):
                raise TokenizerError(f"tokenizer metadata {key!r} must be an array of {elem_name}, "
                                     f"element {i} is {describe(v)}")
    return value


def _meta_str(meta: dict[str, Any], key: str, default: str | None = None) -> str | None:
    value = meta.get(key, default)
    if value is not None and not isinstance(value, str):
        raise TokenizerError(f"tokenizer metadata {key!r} must be a string, got {describe(value)}")
    return value


def _meta_bool(meta: dict[str, Any], key: str, default: bool) -> bool:
    value = meta.get(key, default)
    if not isinstance(value, bool):
        raise TokenizerError(f"tokenizer metadata {key!r} must be a boolean, got {describe(value)}")
    return value


_KINDS: dict[str, type["Tokenizer"]] = {}  # tokenizer.ggml.model -> its class, in registration order


class Tokenizer(ABC):
    """Common interface; build one with Tokenizer.from_metadata(meta)."""

    def __init__(self, meta: dict[str, Any]):
        self.tokens: list[str] = _meta_list(meta, "tokenizer.ggml.tokens", str, "strings")
        if "tokenizer.ggml.token_type" in meta:
            types = _meta_list(meta, "tokenizer.ggml.token_type", int, "integers")
        else:
            types = [TOKEN_TYPE_NORMAL] * len(self.tokens)
        if len(types) != len(self.tokens):
            raise TokenizerError(f"tokenizer.ggml.token_type ({len(types)}) and tokenizer.ggml.tokens "
                                 f"({len(self.tokens)}) differ in length")
        self.token_types: list[int] = list(types)
        self.vocab_size = len(self.tokens)
        self.bos_id: int | None = self._optional_id(meta, "tokenizer.ggml.bos_token_id")
        self.eos_id: int | None = self._optional_id(meta, "tokenizer.ggml.eos_token_id")
        self.add_bos: bool = _meta_bool(meta, "tokenizer.ggml.add_bos_token", self.default_add_bos)
        self.chat_template: str | None = _meta_str(meta, "tokenizer.chat_template")
        self.architecture: str = _meta_str(meta, "general.architecture", "") or ""
        # text -> id of tokens that may be written by a template (control and user-defined)
        self.special_tokens: dict[str, int] = {
            text: i for i, (text, kind) in enumerate(zip(self.tokens, self.token_types))
            if kind in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED) and text
        }
        self._special_split = (
            re.compile("(" + "|".join(re.escape(t) for t in sorted(self.special_tokens, key=len, reverse=True)) + ")")
            if self.special_tokens else None
        )
        eot_id = self._optional_id(meta, "tokenizer.ggml.eot_token_id")
        for key in ("tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id"):
            self._optional_id(meta, key)  # unused by some kinds, but a file naming a missing token is corrupt
        self.stop_ids: set[int] = {i for i in (self.eos_id, eot_id) if i is not None}
        self.stop_ids |= {self.special_tokens[t] for t in END_OF_TURN_TEXTS if t in self.special_tokens}

    default_add_bos = False

    def _optional_id(self, meta: dict[str, Any], key: str) -> int | None:
        value = meta.get(key)
        if value is None:
            return None
        if not _is_int(value) or not 0 <= value < len(self.tokens):
            raise TokenizerError(f"{key} = {describe(value)} is not a token id of this vocabulary")
        return value

    def __init_subclass__(cls, kind: str | None = None, **kwargs):
        """`class BPETokenizer(Tokenizer, kind="gpt2")`: the class for that tokenizer.ggml.model."""
        super().__init_subclass__(**kwargs)
        if kind is not None:
            _KINDS[kind] = cls

    @staticmethod
    def from_metadata(meta: dict[str, Any]) -> "Tokenizer":
        """The tokenizer a file's metadata describes. The kinds register themselves (above); the
        package (sysinfer/model/__init__.py) imports every kind's module, so this module needs none
        of them (they import it: no circle)."""
        kind = meta.get("tokenizer.ggml.model")
        supported = ", ".join(repr(k) for k in _KINDS)
        if not isinstance(kind, str):
            raise TokenizerError(f"tokenizer.ggml.model must be a string ({supported}), got {describe(kind)}")
        if kind not in _KINDS:
            raise TokenizerError(f"tokenizer.ggml.model = {describe(kind)} is not supported (supported: {supported})")
        return _KINDS[kind](meta)

    # ---- the kind-specific part ----
    @abstractmethod
    def _encode_plain(self, text: str, first: bool) -> list[int]:
        """Text without special tokens; `first` is True for the start of the whole input."""

    @abstractmethod
    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for (special tokens: their text)."""

    # ---- shared ----
    def encode(self, text: str, *, allow_special: bool = False, add_bos: bool = False) -> list[int]:
        """Token ids of text; special-token text becomes single ids only with allow_special."""
        ids: list[int] = [self.bos_id] if add_bos and self.bos_id is not None else []
        if not allow_special or self._special_split is None:
            return ids + (self._encode_plain(text, True) if text else [])
        first = True
        for i, part in enumerate(self._special_split.split(text)):
            if i % 2 == 1:
                ids.append(self.special_tokens[part])
            elif part:
                ids.extend(self._encode_plain(part, first))
            first = False
        return ids

    def is_special(self, token_id: int) -> bool:
        return self.token_types[token_id] in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)

    def is_control(self, token_id: int) -> bool:
        """A control token (`<|im_start|>`, `<|eot_id|>`): frames turns; user-defined ones (`<think>`) don't."""
        return self.token_types[token_id] == TOKEN_TYPE_CONTROL

    def decode_bytes(self, ids, *, skip_special: bool = False) -> bytes:
        return b"".join(self.token_bytes(i) for i in ids
                        if not (skip_special and self.token_types[i] == TOKEN_TYPE_CONTROL))

    def decode(self, ids, *, skip_special: bool = False) -> str:
        return self.decode_bytes(ids, skip_special=skip_special).decode("utf-8", errors="replace")

    def token_text(self, token_id: int) -> str:
        return self.tokens[token_id]

    # ---- chat ----
    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True,
                    tools: list | None = None, *, variables: dict[str, Any] | None = None) -> str:
        from .chat_template import render_chat

        return render_chat(self, messages, add_generation_prompt, tools, variables=variables)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            tools: list | None = None, *, variables: dict[str, Any] | None = None) -> list[int]:
        """Prompt ids of a chat; `variables`: extra template variables (e.g. {"enable_thinking": False})."""
        from .chat_template import chat_token_ids

        return chat_token_ids(self, messages, add_generation_prompt, tools, variables=variables)
