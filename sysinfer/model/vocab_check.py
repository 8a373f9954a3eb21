"""Whether two GGUF files share one vocabulary: a draft model's proposals are token ids the target
verifies, so every id must mean the same token in both (same count, strings, types, BOS and EOS)."""

from __future__ import annotations

from .model_file import GGUFModelFile, ModelLoadError

_TOKENS, _TYPES = "tokenizer.ggml.tokens", "tokenizer.ggml.token_type"
_SCALARS = {"tokenizer.ggml.model": "tokenizer model", "tokenizer.ggml.bos_token_id": "BOS id",
            "tokenizer.ggml.eos_token_id": "EOS id"}


def _shown(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _first_difference(a: list, b: list) -> int | None:
    """The first index where the lists differ (a length difference counts at the shorter's end)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def vocabulary_mismatch(target: GGUFModelFile, draft: GGUFModelFile) -> str | None:
    """None when the vocabularies are the same, else what differs first (one line)."""
    if target.hparams.n_vocab != draft.hparams.n_vocab:
        return f"the draft model has {draft.hparams.n_vocab} tokens, the target {target.hparams.n_vocab}"
    for key, name in _SCALARS.items():
        mine, theirs = draft.metadata.get(key), target.metadata.get(key)
        if mine != theirs:
            return f"the {name} is {_shown(mine)} in the draft model, {_shown(theirs)} in the target"
    for key, what in ((_TOKENS, "is"), (_TYPES, "has type")):
        mine, theirs = list(draft.metadata.get(key) or []), list(target.metadata.get(key) or [])
        i = _first_difference(mine, theirs)
        if i is not None:
            at = lambda values: _shown(values[i]) if i < len(values) else "missing"  # noqa: E731
            return f"token id {i} {what} {at(mine)} in the draft model, {at(theirs)} in the target"
    return None


def check_same_vocabulary(target: GGUFModelFile, draft: GGUFModelFile) -> None:
    """Raises ModelLoadError naming the draft file and the first difference."""
    problem = vocabulary_mismatch(target, draft)
    if problem:
        raise ModelLoadError(f"draft model {draft.path}: its vocabulary differs from the target's: {problem}")
