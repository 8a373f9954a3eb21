"""A reasoning model's thinking tags (`<think>` / `</think>`, DeepSeek-R1 and Qwen3), as its tokenizer and
chat template have them: whether the model thinks, and the ids that spell each tag. A fact of the model
file, read by the engine (engine/reasoning.py: where a reply's section begins and ends) and by the tool-call
syntax (structured/tools.py: a call inside the section is not made).
"""

from __future__ import annotations

from dataclasses import dataclass

START, END = "<think>", "</think>"


@dataclass(frozen=True)
class Markers:
    """A model's thinking tags: their text and the ids that spell them (one id each when the
    vocabulary has the tag as a token)."""
    start: str
    end: str
    start_ids: tuple[int, ...]
    end_ids: tuple[int, ...]


def markers_for(tokenizer) -> Markers | None:
    """The model's thinking tags, or None for a model that does not think. Asked once per tokenizer."""
    known = getattr(tokenizer, "_reasoning_markers", False)
    if known is not False:
        return known
    from .chat_template import ChatTemplateError, template_source

    try:
        source = template_source(tokenizer)
    except ChatTemplateError:
        source = ""
    vocab = getattr(tokenizer, "special_tokens", {}) or {}
    single = {tag: _single_id(tokenizer, tag, vocab) for tag in (START, END)}
    thinks = END in source or single[END] is not None
    known = Markers(START, END, _ids(tokenizer, START, single[START]), _ids(tokenizer, END, single[END])) \
        if thinks else None
    tokenizer._reasoning_markers = known
    return known


def _single_id(tokenizer, tag: str, vocab: dict) -> int | None:
    if tag in vocab:
        return vocab[tag]
    ids = tokenizer.encode(tag)
    return ids[0] if len(ids) == 1 else None


def _ids(tokenizer, tag: str, single: int | None) -> tuple[int, ...]:
    return (single,) if single is not None else tuple(tokenizer.encode(tag))
