"""llguidance's view of our vocabulary: every token as the raw bytes it stands for, plus the ids
that end a reply (EOS and the end-of-turn tokens).

Special tokens get a 0xFF prefix, llguidance's marker for "not text": a grammar can then never
produce `<|im_end|>` by spelling it out, and no JSON string can contain one. Building the trie costs
about 0.4 s on a 49k vocabulary, so it is built once per tokenizer, on first use.
"""

from __future__ import annotations

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
        self.special_token_ids = [i for i in range(tokenizer.vocab_size) if tokenizer.is_special(i)]
        special = set(self.special_token_ids)
        self.tokens = [_SPECIAL_MARK + tokenizer.token_bytes(i) if i in special else tokenizer.token_bytes(i)
                       for i in range(tokenizer.vocab_size)]

    def __call__(self, text) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._tokenizer.encode(text)


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
