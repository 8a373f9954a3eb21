"""Streaming text out of tokens: only complete UTF-8, and stop strings caught across tokens.

IncrementalDetokenizer decodes a short window of recent tokens (with a little context before it, so
SentencePiece's leading-space rule is applied as in a whole decode) and emits the new text only when it
doesn't end in a partial character; a Chinese character or emoji split over byte tokens is held back
until its last byte arrives. StopChecker holds back any tail that could still grow into a stop string,
so a stop string split across tokens is caught and never sent.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_ids: list[int] | None = None, context: int = 6):
        self.tokenizer = tokenizer
        self.ids: list[int] = list(prompt_ids[-context:]) if prompt_ids else []
        self.prefix_offset = 0            # window start: context for the decode
        self.read_offset = len(self.ids)  # tokens before this are already emitted

    def add(self, token_id: int) -> str:
        """New complete text after appending token_id ('' while a character is incomplete)."""
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self.prefix_offset : self.read_offset])
        full = decode(self.ids[self.prefix_offset :])
        if len(full) <= len(prefix) or full.endswith(REPLACEMENT):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        # Keep the buffer short: only the window matters from here on.
        if self.prefix_offset > 64:
            self.ids = self.ids[self.prefix_offset :]
            self.read_offset -= self.prefix_offset
            self.prefix_offset = 0
        return full[len(prefix) :]

    def flush(self) -> str:
        """Text held back at the end; an incomplete final character is dropped, never sent broken."""
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self.prefix_offset : self.read_offset])
        full = decode(self.ids[self.prefix_offset :]).rstrip(REPLACEMENT)
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix) :] if len(full) > len(prefix) else ""


class StopChecker:
    """feed(text) -> (text safe to send, stopped); flush() -> what was held back, at the end."""

    def __init__(self, stop: list[str] | None):
        self.stop = [s for s in (stop or []) if s]
        self.held = ""
        self.stopped = False

    def feed(self, text: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        if not self.stop:
            return text, False
        buf = self.held + text
        hits = [(buf.find(s), s) for s in self.stop if s in buf]
        if hits:
            at = min(i for i, _ in hits)
            self.held, self.stopped = "", True
            return buf[:at], True
        keep = self._partial_tail(buf)
        self.held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def _partial_tail(self, buf: str) -> int:
        """Length of the longest end of buf that is a proper prefix of some stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:n]):
                    best = n
                    break
        return best

    def flush(self) -> str:
        out, self.held = self.held, ""
        return "" if self.stopped else out
