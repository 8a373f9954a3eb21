"""Token log probabilities in OpenAI's two response shapes (the numbers come from engine/logprobs.py).

Chat (`logprobs: true`, `top_logprobs: k`): `{"content": [{"token", "logprob", "bytes",
"top_logprobs": [{"token", "logprob", "bytes"}] * k}], "refusal": null}`, one entry per generated
token; `bytes` are the token's exact UTF-8 bytes (a character split over tokens has its bytes spread
over them, and `token` shows U+FFFD for the incomplete part), so joining every entry's bytes gives
the reply (a reply cut by max_tokens inside a character leaves that incomplete character out of its
text, never sending it broken; its bytes are still in the last entries).

Completions (the legacy integer `logprobs: k`): `{"tokens", "token_logprobs", "top_logprobs",
"text_offset"}`, parallel lists; each `top_logprobs` item maps token text to logprob for the k most
likely tokens plus the sampled one (up to k + 1 keys); `text_offset` is the character offset in the
generated text where each token's text starts (a token that only completes a character points at
that character's start), counted across a stream's chunks.
"""

from __future__ import annotations

import codecs
from typing import Any

from ..engine.logprobs import TokenLogprob

FLOOR = -9999.0  # what OpenAI reports for a token with no probability at all (keeps the JSON finite)


class LogprobFormatter:
    """One choice's logprobs, chunk after chunk (the text offset carries over)."""

    def __init__(self, tokenizer, chat: bool):
        self.tokenizer, self.chat = tokenizer, chat
        self._text_chars = 0  # characters of generated text before the next token
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def format(self, entries: list[TokenLogprob]) -> dict[str, Any]:
        return self._chat(entries) if self.chat else self._legacy(entries)

    def _text(self, token_id: int) -> tuple[str, bytes]:
        if token_id >= self.tokenizer.vocab_size:  # a padded logits row with no token behind it
            return "", b""
        raw = self.tokenizer.token_bytes(token_id)
        return raw.decode("utf-8", errors="replace"), raw

    def _chat(self, entries: list[TokenLogprob]) -> dict[str, Any]:
        content = []
        for e in entries:
            item = self._chat_item(e.token_id, e.logprob)
            item["top_logprobs"] = [self._chat_item(t, lp) for t, lp in e.top]
            content.append(item)
        return {"content": content, "refusal": None}

    def _chat_item(self, token_id: int, logprob: float) -> dict[str, Any]:
        text, raw = self._text(token_id)
        return {"token": text, "logprob": max(logprob, FLOOR), "bytes": list(raw)}

    def _legacy(self, entries: list[TokenLogprob]) -> dict[str, Any]:
        tokens, token_logprobs, top, offsets = [], [], [], []
        for e in entries:
            text, raw = self._text(e.token_id)
            offsets.append(self._text_chars)
            self._text_chars += len(self._decoder.decode(raw))  # an incomplete character counts when complete
            tokens.append(text)
            token_logprobs.append(max(e.logprob, FLOOR))
            best = {self._text(t)[0]: max(lp, FLOOR) for t, lp in e.top}
            best.setdefault(text, max(e.logprob, FLOOR))  # the sampled token is always there
            top.append(best)
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}

