"""Encoder models from GGUF (embeddings and rerank): the interface the server codes against.

    from sysinfer.model.encoder_model import load_encoder
    m = load_encoder("all-MiniLM-L6-v2.F16.gguf", threads=None)   # ModelLoadError naming what is wrong
    m.name      # general.name, else the file's stem
    m.kind      # "embedding" or "rerank" (a file with a classification head and pooling rank)
    m.dim       # length of each embedding (hidden size); rerankers: the hidden size too
    m.n_ctx     # the most tokens one input may have, specials included
    m.pooling   # "mean" | "cls" | "last" | "rank" (the file's bert.pooling_type; see architecture.py)
    ids = m.tokenize(text)                 # [CLS] text [SEP] (BERT) / <s> text </s> (XLM-R)
    ids = m.tokenize_pair(query, doc)      # [CLS] q [SEP] d [SEP] / <s> q </s></s> d </s>
    v = m.embed([ids, ...], normalize=True)   # float32 [n, dim]: pooled, L2-normalized if asked
    s = m.rerank([pair_ids, ...])             # float32 [n]: the head's raw score (a logit: no sigmoid)

Errors: a ValueError naming the input (its index) and what is wrong: an empty input, an input longer
than n_ctx (the caller decides whether to truncate: `ids[:n_ctx - 1] + ids[-1:]` keeps the closing
special), a token id outside the vocabulary, embed() on a reranker or rerank() on an embedding model.
A call's inputs run in as few native calls as fit the arena (max_batch_tokens tokens each, inputs laid
end to end with no padding), each with the GIL released; the arena is sized once at load, so a call
allocates nothing in the native core. One call at a time per model (the caller serialises them).

Token types are all 0, pair inputs too, as llama.cpp runs them (its `bert` graph hard-codes sentence A).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .. import _native
from ..threads import resolve_threads
from .architecture import EncoderHParams, encoder_hparams_from_metadata, encoder_tensor_shapes
from .description import describe_encoder
from .model_file import (SUPPORTED_TYPES, GGUFModelFile, ModelLoadError, check_file, check_metadata_types,
                         collect_tensors, read_directory)
from .tokenizer import Tokenizer

log = logging.getLogger("sysinfer.encoder")

MAX_ARENA_TOKENS = 8192   # default arena: the file's context (at least MIN_ARENA_TOKENS), at most this
MIN_ARENA_TOKENS = 2048


def _squeezed(shape) -> tuple[int, ...]:
    """A GGUF shape without trailing 1s: ggml counts a tensor's dimensions up to its last one above 1, so
    llama-quantize rewrites XLM-R's token_types [D, 1] and a one-score cls.output [D, 1] as [D]."""
    shape = tuple(int(n) for n in shape)
    while len(shape) > 1 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _check_tensors(path: str, tensors: dict, hp: EncoderHParams, n_cls_out: int) -> None:
    required, optional = encoder_tensor_shapes(hp, n_cls_out)
    for name, shape in required.items():
        if name not in tensors:
            raise ModelLoadError(f"{path}: missing tensor {name!r} (expected shape {list(shape)})")
    for name, t in tensors.items():
        want = required.get(name, optional.get(name))
        if want is None:
            continue  # tensors the encoder does not use (a pooler, an MLM head) are ignored
        if _squeezed(t.shape) != _squeezed(want):  # llama-quantize writes a [D, 1] matrix as [D]
            raise ModelLoadError(f"{path}: tensor {name!r} has shape {list(t.shape)}, expected {list(want)}")
        if t.type not in SUPPORTED_TYPES:
            raise ModelLoadError(f"{path}: tensor {name!r} has unsupported type {t.type.name}")
        if len(want) == 1 and t.type.name != "F32":
            raise ModelLoadError(f"{path}: tensor {name!r} is {t.type.name}; vectors must be F32")
        if len(want) > 1 and t.cols % 32:
            raise ModelLoadError(f"{path}: tensor {name!r} row length {t.cols} is not a multiple of 32")


def read_encoder_file(path: str) -> tuple[GGUFModelFile, EncoderHParams, int]:
    """(the file, its hyperparameters, rows of cls.output: 1 without a head). ModelLoadError on anything wrong."""
    path = os.fspath(path)
    size = check_file(path)
    metadata, entries, data_start = read_directory(path)
    tensors = collect_tensors(path, entries, data_start, size)
    head = tensors.get("cls.output.weight")
    n_cls_out = head.rows if head is not None and len(head.shape) == 2 else 1
    types = tensors.get("token_types.weight")
    try:
        check_metadata_types(metadata)
        hp = encoder_hparams_from_metadata(metadata, head is not None, types.rows if types is not None else 0)
    except (KeyError, ValueError, TypeError) as e:
        raise ModelLoadError(f"{path}: {e.args[0] if e.args else e}") from None
    tokens = metadata.get("tokenizer.ggml.tokens")
    if tokens is not None and len(tokens) != hp.n_vocab:
        raise ModelLoadError(f"{path}: tokenizer.ggml.tokens has {len(tokens)} tokens but the vocabulary size is {hp.n_vocab}")
    _check_tensors(path, tensors, hp, n_cls_out)
    return GGUFModelFile(path=path, hparams=hp, metadata=metadata, tensors=tensors, file_bytes=size), hp, n_cls_out


@dataclass
class EncoderModel:
    """An encoder in the native core (see the module docstring for the interface)."""

    name: str
    kind: str
    dim: int
    n_ctx: int
    pooling: str
    tokenizer: Tokenizer = field(repr=False)
    native: object = field(repr=False)
    max_batch_tokens: int = 0
    n_vocab: int = 0
    vocab: str = "bert"  # tokenizer.ggml.model: "bert" (WordPiece) or "t5" (XLM-R's unigram)
    sep_id: int | None = None  # the separator a pair gets between its two parts (add_sep_token), or None

    def tokenize(self, text: str) -> list[int]:
        """The ids of one input with the model's specials ([CLS] text [SEP] or <s> text </s>)."""
        return self.tokenizer.encode_input(text)

    def tokenize_pair(self, query: str, doc: str) -> list[int]:
        """A (query, document) pair as the file's tokenizer joins them, as llama.cpp's rerank does:
        [CLS] q [SEP] d [SEP] for WordPiece; for XLM-R <s> q </s></s> d </s> (Hugging Face's format)
        when the file says tokenizer.ggml.add_sep_token (gguf-py writes it for XLM-R), else <s> q </s> d </s>."""
        q, d = self.tokenizer.encode_input(query), self.tokenizer.encode_input(doc)
        if self.vocab == "bert" or self.sep_id is None:
            return q + d[1:]                  # [CLS] q [SEP] + d [SEP]
        return q + [self.sep_id] + d[1:]      # <s> q </s> + </s> + d </s>

    def embed(self, batch: Sequence[Sequence[int]], normalize: bool = True) -> np.ndarray:
        """float32 [len(batch), dim]: each input's pooled vector (L2-normalized if asked)."""
        if self.kind != "embedding":
            raise ValueError(f"model {self.name!r} is a reranker (pooling {self.pooling}): it gives scores, not embeddings")
        return self._run(batch, normalize, self.dim)

    def rerank(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """float32 [len(batch)]: the classification head's first output for each (pair) input, a raw
        logit (apply a sigmoid for a 0..1 relevance if wanted)."""
        if self.kind != "rerank":
            raise ValueError(f"model {self.name!r} is an embedding model (pooling {self.pooling}): it has no rank head")
        return self._run(batch, False, self.native.out_width)[:, 0].copy()

    def _arrays(self, batch: Sequence[Sequence[int]]) -> list[np.ndarray]:
        out = []
        for i, ids in enumerate(batch):
            a = np.asarray(ids)
            if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
                raise ValueError(f"input {i} must be a list of token ids (integers)")
            if a.size == 0:
                raise ValueError(f"input {i} is empty: an input needs at least one token")
            if a.size > self.n_ctx:
                raise ValueError(f"input {i} has {a.size} tokens, more than the model's limit of {self.n_ctx}")
            if a.min() < 0 or a.max() >= self.n_vocab:
                raise ValueError(f"input {i} has token id {int(a.min() if a.min() < 0 else a.max())} outside the "
                                 f"vocabulary (0..{self.n_vocab - 1})")
            out.append(a.astype(np.int32))
        return out

    def _run(self, batch: Sequence[Sequence[int]], normalize: bool, width: int) -> np.ndarray:
        arrays = self._arrays(batch)
        out = np.empty((len(arrays), width), dtype=np.float32)
        start = 0
        while start < len(arrays):  # as many inputs per native call as the arena holds
            end, total = start, 0
            while end < len(arrays) and total + arrays[end].size <= self.max_batch_tokens:
                total += arrays[end].size
                end += 1
            chunk = arrays[start:end]
            tokens = np.concatenate(chunk)
            starts = np.zeros(len(chunk) + 1, dtype=np.int32)
            np.cumsum([a.size for a in chunk], out=starts[1:])
            self.native.run(tokens, starts, normalize, out[start:end])
            start = end
        return out


def _pair_separator(meta: dict, tokenizer: Tokenizer) -> int | None:
    """The extra token between a pair's parts: the separator (else eos) when add_sep_token is set."""
    if meta.get("tokenizer.ggml.add_sep_token") is not True:
        return None
    sep = meta.get("tokenizer.ggml.seperator_token_id", tokenizer.eos_id)
    if isinstance(sep, bool) or not isinstance(sep, int) or not 0 <= sep < tokenizer.vocab_size:
        raise ModelLoadError(f"tokenizer.ggml.seperator_token_id = {sep!r} is not a token id of this vocabulary")
    return sep


def load_encoder(path: str, threads: int | None = None, max_batch_tokens: int | None = None) -> EncoderModel:
    """Reads, checks and packs an encoder GGUF (llama.cpp's `bert` architecture: BERT, XLM-RoBERTa).
    threads: as `sysinfer serve --threads` (OMP_NUM_THREADS, GOMP_CPU_AFFINITY honoured). max_batch_tokens:
    the arena, tokens per native call (default: the file's context, within 2,048..8,192); an input may
    have up to min(its context, max_batch_tokens) tokens."""
    mf, hp, n_cls_out = read_encoder_file(path)
    try:
        tokenizer = Tokenizer.from_metadata(mf.metadata)
    except ModelLoadError as e:
        raise ModelLoadError(f"{mf.path}: {e}") from None
    if mf.metadata.get("tokenizer.ggml.model") not in ("bert", "t5"):
        raise ModelLoadError(f"{mf.path}: tokenizer.ggml.model {mf.metadata.get('tokenizer.ggml.model')!r} is not an "
                             "encoder vocabulary (bert: WordPiece, t5: XLM-R's unigram)")
    if max_batch_tokens is None:
        max_batch_tokens = min(max(hp.n_ctx_train, MIN_ARENA_TOKENS), MAX_ARENA_TOKENS)
    if not 1 <= max_batch_tokens <= 1 << 20:
        raise ValueError(f"max_batch_tokens must be in 1..{1 << 20}, got {max_batch_tokens}")
    n_threads, cpus = resolve_threads(threads)
    desc, names = describe_encoder(hp, mf.tensors, n_cls_out)
    try:
        native = _native.Encoder(desc, n_threads, cpus[:n_threads] if cpus else [])
        for layer in range(-1, hp.n_layer):
            native.load(layer, [mf.tensors[names[i]].raw_bytes() for i in native.layer_tensors(layer)])
        native.finish_loading()
        native.reserve(max_batch_tokens)
    except ValueError as e:  # the description or the data refused by the core
        raise ModelLoadError(f"{mf.path}: {e}") from None
    name = mf.metadata.get("general.name") or os.path.splitext(os.path.basename(mf.path))[0]
    log.info("encoder %s: %s, %d layers, dim %d, pooling %s, %d threads (%s), arena %d tokens (%.0f MiB)",
             name, "reranker" if hp.pooling == "rank" else "embedding", hp.n_layer, hp.n_embd, hp.pooling,
             native.n_threads, native.kernels, max_batch_tokens, native.arena_bytes / 2**20)
    return EncoderModel(name=str(name), kind="rerank" if hp.pooling == "rank" else "embedding", dim=hp.n_embd,
                        n_ctx=min(hp.n_ctx_train, max_batch_tokens), pooling=hp.pooling, tokenizer=tokenizer,
                        native=native, max_batch_tokens=max_batch_tokens, n_vocab=hp.n_vocab,
                        vocab=mf.metadata["tokenizer.ggml.model"], sep_id=_pair_separator(mf.metadata, tokenizer))
