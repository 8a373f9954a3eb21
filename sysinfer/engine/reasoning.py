"""The thinking section of a reasoning model's reply (`<think>` ... `</think>`, DeepSeek-R1 and Qwen3):
where it begins and ends, so its text goes out as `reasoning_content` and `content` holds only the
answer, never the tags.

Markers are the model's own: `<think>` / `</think>` as single tokens where the vocabulary has them
(Qwen3, DeepSeek-R1-Distill), else as text spelled over several tokens. Sections are found in the
decoded text (a tag split over tokens, or over stream chunks, is held back until it is whole), and
the ids of the markers are kept for what the engine writes itself: the rest of an opening tag, and
the closing tag when a thinking budget runs out.

A model thinks only if its chat template speaks of `</think>` or its vocabulary has the tag as a
token; templates that open the section in the generation prompt (DeepSeek-R1, Qwen3-Thinking) start
the reply inside it. `--reasoning-format none` turns all of this off: the text is left untouched.
"""

from __future__ import annotations

from ..model.thinking_tags import END, START, Markers, markers_for  # noqa: F401 (the engine's names for them)

FORMATS = ("deepseek", "none")  # llama.cpp's names: deepseek = reasoning_content apart; none = untouched

BEFORE, INSIDE, ANSWER = "before", "inside", "answer"


def starts_inside(tokenizer, markers: Markers, prompt_ids: list[int]) -> bool:
    """The generation prompt opened the section itself (it ends with `<think>`, whitespace aside):
    the reply starts inside it. A prompt that ends with an empty section (`<think>\\n\\n</think>`,
    Qwen3 with thinking off) starts in the answer."""
    tail = tokenizer.decode(prompt_ids[-16:]).rstrip()
    return tail.endswith(markers.start)


def _partial_tail(text: str, tag: str) -> int:
    """Length of the longest end of text that is a proper start of tag (held back: it may grow into it)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ReasoningTracker:
    """Text of the reply in (as decoded, in any pieces), (reasoning, answer) out.

    BEFORE: nothing but whitespace yet; the reply may still open a section. INSIDE: in a section.
    ANSWER: the answer; another `<think>` there opens another section unless the answer is locked
    (under an output grammar every character is the answer's, tags in JSON strings included), and a
    stray `</think>` (no section open) is dropped, never left in the answer.
    Whitespace right after a tag (the template's separator) goes to neither side."""

    def __init__(self, markers: Markers, inside: bool = False):
        self.markers = markers
        self.state = INSIDE if inside else BEFORE
        self.locked = False
        self.held = ""         # text that may still be (part of) a tag
        self.strip = True      # drop leading whitespace (just after a tag, or at the reply's start)
        self.sections = 0      # sections closed so far

    def lock(self) -> None:
        """From here on everything is the answer, as written (output grammars)."""
        self.locked = True
        if self.state == BEFORE:
            self.state = ANSWER

    def feed(self, text: str) -> tuple[str, str]:
        buf, self.held = self.held + text, ""
        reasoning, answer = [], []
        while buf:
            if self.strip:
                buf = buf.lstrip()
                if not buf:
                    break
                self.strip = False
            if self.state == INSIDE:
                at = buf.find(self.markers.end)
                if at < 0:
                    keep = _partial_tail(buf, self.markers.end)
                    reasoning.append(buf[: len(buf) - keep])
                    self.held = buf[len(buf) - keep:]
                    break
                reasoning.append(buf[:at])
                buf = buf[at + len(self.markers.end):]
                self.state, self.strip = ANSWER, True
                self.sections += 1
                continue
            if self.locked:
                answer.append(buf)
                break
            at = buf.find(self.markers.start)
            stray = buf.find(self.markers.end)
            if stray >= 0 and (at < 0 or stray < at):
                # A closing tag with no section open (a small model writes one again after its
                # answer began): a marker, never the answer's text; dropped with the whitespace after it.
                answer.append(buf[:stray])
                buf = buf[stray + len(self.markers.end):]
                self.state, self.strip = ANSWER, True
                continue
            if at < 0:
                if self.state == BEFORE and not self.markers.start.startswith(buf):
                    self.state = ANSWER
                keep = len(buf) if self.state == BEFORE else \
                    max(_partial_tail(buf, self.markers.start), _partial_tail(buf, self.markers.end))
                answer.append(buf[: len(buf) - keep])
                self.held = buf[len(buf) - keep:]
                break
            answer.append(buf[:at])
            buf = buf[at + len(self.markers.start):]
            self.state, self.strip = INSIDE, True
        return "".join(reasoning), "".join(answer)

    def flush(self) -> tuple[str, str]:
        """What was held back, at the end: a tag never finished is text of the side it was in."""
        held, self.held = self.held, ""
        return (held, "") if self.state == INSIDE else ("", held)
