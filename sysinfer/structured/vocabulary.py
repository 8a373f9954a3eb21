"""llguidance's view of our vocabulary: every token as the raw bytes it stands for, plus the ids
that end a reply (EOS and the end-of-turn tokens).

Control tokens get a 0xFF prefix, llguidance's marker for "not text": a grammar can then never
produce `<|im_end|>` by spelling it out, and no JSON string can contain one. User-defined tokens
(`<tool_call>`, `</tool_call>`, `<think>` in Qwen's vocabulary) are text the model writes in one
token: they stand for their bytes, so the grammar's `<tool_call>` is the very token Qwen was trained
to write (marked "not text", it was forbidden, and Qwen could call a function only by spelling the
tag in pieces, which it does not do on its own). Building the trie costs about 0.4 s on a 49k
vocabulary, so it is built once per tokenizer, on first use.
"""

from __future__ import annotations

import re
import threading

import llguidance

_SPECIAL_MARK = b"\xff"
_lock = threading.Lock()


class _VocabularyView:
    """The duck-typed tokenizer llguidance.TokenizerWrapper reads: ids, bytes, and an encoder."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos_id if tokenizer.eos_id is not None else min(tokenizer.stop_ids, default=0)
        self.bos_token_id = tokenizer.bos_id
        self.special_token_ids = [i for i in range(tokenizer.vocab_size) if _control(tokenizer, i)]
        special = set(self.special_token_ids)
        self.tokens = [_SPECIAL_MARK + tokenizer.token_bytes(i) if i in special else tokenizer.token_bytes(i)
                       for i in range(tokenizer.vocab_size)]
        # Text the grammar forces is tokenized by this encoder, and llguidance then allows only that
        # tokenization: the user-defined tokens' text must come out as those tokens (Qwen writes
        # <tool_call> as one token), control tokens' text stays text.
        words = {tokenizer.token_bytes(i).decode("utf-8", errors="replace"): i for i in range(tokenizer.vocab_size)
                 if i not in special and tokenizer.is_special(i)}
        words = {w: i for w, i in words.items() if w}
        self._words = words
        self._split = re.compile("(" + "|".join(map(re.escape, sorted(words, key=len, reverse=True))) + ")") \
            if words else None

    def __call__(self, text) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        if self._split is None:
            return self._tokenizer.encode(text)
        ids: list[int] = []
        for i, part in enumerate(self._split.split(text)):
            if i % 2:
                ids.append(self._words[part])
            elif part:
                ids.extend(self._tokenizer.encode(part))
        return ids


def _control(tokenizer, i: int) -> bool:
    """Not text to a grammar: a control token (a tokenizer without the distinction: any special one)."""
    is_control = getattr(tokenizer, "is_control", None)
    return is_control(i) if is_control is not None else tokenizer.is_special(i)


def grammar_tokenizer(tokenizer) -> llguidance.LLTokenizer:
    """The LLTokenizer of one of our tokenizers, built once and kept on it."""
    built = getattr(tokenizer, "_llguidance", None)
    if built is None:
        with _lock:
            built = getattr(tokenizer, "_llguidance", None)
            if built is None:
                stop_ids = sorted(tokenizer.stop_ids) or [0]
                built = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_VocabularyView(tokenizer)),
                                               n_vocab=tokenizer.vocab_size, eos_token=stop_ids)
                tokenizer._llguidance = built
    return built
