"""Reading and validating a GGUF model file before any arithmetic.

Everything that can be wrong with a file (magic, version, keys, tensor names, shapes, types, data
past the end of the file) is found here and reported as one ModelLoadError naming what was wrong.
"""

from __future__ import annotations

import math
import os
import re
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from .architecture import ModelHParams, expected_tensor_shapes, hparams_from_metadata
from .gguf_header import GGUFFormatError, NotGGUFError, TensorEntry, describe, read_header

# The tensor types the native core loads (native/src/kernels.h's WType: GGML's type ids). Every one
# has a packed format, a generic kernel and a dequantization held bit-exact to gguf-py's.
SUPPORTED_TYPES = {
    GGMLQuantizationType.F32,
    GGMLQuantizationType.F16,
    GGMLQuantizationType.BF16,
    GGMLQuantizationType.Q4_0,
    GGMLQuantizationType.Q4_1,
    GGMLQuantizationType.Q5_0,
    GGMLQuantizationType.Q5_1,
    GGMLQuantizationType.Q8_0,
    GGMLQuantizationType.Q2_K,
    GGMLQuantizationType.Q3_K,
    GGMLQuantizationType.Q4_K,
    GGMLQuantizationType.Q5_K,
    GGMLQuantizationType.Q6_K,
    GGMLQuantizationType.IQ4_NL,
    GGMLQuantizationType.IQ4_XS,
}
FLOAT_TYPES = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16}


MAX_MESSAGE = 1000  # characters: a ModelLoadError is printed on one line and served by /health


class ModelLoadError(Exception):
    """A model file that can't be served; the message names the key or tensor at fault. The message
    is one line of at most MAX_MESSAGE characters, whatever the file contained."""

    def __init__(self, message: str = ""):
        message = " ".join(str(message).split())
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 40] + f"... ({len(message)} chars in all)"
        super().__init__(message)


@dataclass
class TensorData:
    name: str
    type: GGMLQuantizationType
    shape: tuple[int, ...]  # GGUF order: shape[0] is the row length (ne0)
    data: np.ndarray        # the file's bytes (a view of the mmap)

    @property
    def rows(self) -> int:
        return math.prod(self.shape[1:])

    @property
    def cols(self) -> int:
        return self.shape[0]

    def raw_bytes(self) -> np.ndarray:
        """uint8 [rows, bytes per row] as stored in the file."""
        return np.ascontiguousarray(self.data).view(np.uint8).reshape(self.rows, -1)


@dataclass
class GGUFModelFile:
    path: str
    hparams: ModelHParams
    metadata: dict[str, Any]
    tensors: dict[str, TensorData] = field(repr=False)
    file_bytes: int = 0

    @property
    def n_params(self) -> int:
        return sum(math.prod(t.shape) for t in self.tensors.values())


def check_file(path: str) -> int:
    """The path names a readable, non-empty regular file (magic and version are the header
    parser's job). Returns the file size."""
    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ModelLoadError(f"{path}: is a directory, not a GGUF model file")
    if not os.path.isfile(path):
        raise ModelLoadError(f"{path}: not a regular file")
    try:
        size = os.path.getsize(path)
        with open(path, "rb"):
            pass
    except OSError as e:
        raise ModelLoadError(f"{path}: can't read the file ({e.strerror or e})") from None
    if size == 0:
        raise ModelLoadError(f"{path}: the file is empty (0 bytes), not a GGUF model")
    return size


def read_directory(path: str) -> tuple[dict[str, Any], list[TensorEntry], int]:
    try:
        _, metadata, entries, data_start = read_header(path)
    except NotGGUFError as e:
        raise ModelLoadError(f"{path}: {e}") from None
    except (GGUFFormatError, UnicodeDecodeError, OverflowError, MemoryError, RecursionError, struct.error) as e:
        raise ModelLoadError(f"{path}: corrupt or truncated GGUF file ({describe(str(e), 400)[1:-1]})") from None
    except OSError as e:
        raise ModelLoadError(f"{path}: can't read the file ({e.strerror or e})") from None
    return metadata, entries, data_start


# Metadata keys we read, outside the architecture's own (architecture.py checks those): the Python
# type each must have. A list type is (list, element type).
METADATA_TYPES: dict[str, Any] = {
    "general.architecture": str,
    "general.name": str,
    "general.alignment": int,
    "tokenizer.ggml.model": str,
    "tokenizer.ggml.pre": str,
    "tokenizer.chat_template": str,
    "tokenizer.ggml.tokens": (list, str),
    "tokenizer.ggml.token_type": (list, int),
    "tokenizer.ggml.scores": (list, (int, float)),
    "tokenizer.ggml.merges": (list, str),
    "tokenizer.ggml.bos_token_id": int,
    "tokenizer.ggml.eos_token_id": int,
    "tokenizer.ggml.eot_token_id": int,
    "tokenizer.ggml.unknown_token_id": int,
    "tokenizer.ggml.padding_token_id": int,
    "tokenizer.ggml.add_bos_token": bool,
    "tokenizer.ggml.add_space_prefix": bool,
}
_TYPE_NAMES = {str: "a string", int: "an integer", bool: "a boolean", (int, float): "a number"}


def _has_type(value: Any, kind: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):  # a bool is an int to Python, never to us
        return False
    return isinstance(value, kind)


def check_metadata_types(metadata: dict[str, Any]) -> None:
    """Every key we read has the type we read it as (a file can store any type under any key)."""
    for key, kind in METADATA_TYPES.items():
        if key not in metadata:
            continue
        value = metadata[key]
        if isinstance(kind, tuple) and kind[0] is list:
            elem = kind[1]
            if not isinstance(value, list) or not all(_has_type(v, elem) for v in value):
                raise ValueError(f"metadata key {key!r} must be an array of {_TYPE_NAMES[elem]}s, got {describe(value)}")
        elif not _has_type(value, kind):
            raise ValueError(f"metadata key {key!r} must be {_TYPE_NAMES[kind]}, got {describe(value)}")


def collect_tensors(path: str, entries: list[TensorEntry], data_start: int, file_size: int) -> dict[str, TensorData]:
    """Views of each tensor's bytes in one read-only mmap of the file (nothing is read yet). Sizes
    are computed in Python ints (no wrap-around) and every tensor must lie inside the file."""
    tensors: dict[str, TensorData] = {}
    placed: list[tuple[int, int, str]] = []
    for e in entries:
        try:
            qtype = GGMLQuantizationType(e.type)
        except ValueError:
            raise ModelLoadError(f"{path}: tensor {describe(e.name)} has unknown type id {e.type}") from None
        if e.name in tensors:
            raise ModelLoadError(f"{path}: tensor {describe(e.name)} appears twice")
        block, block_bytes = GGML_QUANT_SIZES[qtype]
        if e.shape[0] % block:
            raise ModelLoadError(f"{path}: tensor {describe(e.name)} shape {list(e.shape)} does not fit {qtype.name} blocks of {block}")
        n = math.prod(e.shape)
        n_bytes = n // block * block_bytes
        start = data_start + e.offset
        if start + n_bytes > file_size:
            raise ModelLoadError(
                f"{path}: tensor {describe(e.name)} of shape {list(e.shape)} ({n_bytes} bytes at data offset {e.offset}) "
                f"ends at byte {start + n_bytes} but the file has {file_size} bytes (truncated?)"
            )
        placed.append((start, n_bytes, e.name))
        tensors[e.name] = TensorData(e.name, qtype, tuple(int(d) for d in e.shape), None)  # type: ignore[arg-type]
    placed.sort()
    for (a, na, name_a), (b, _, name_b) in zip(placed, placed[1:]):
        if a + na > b:
            raise ModelLoadError(f"{path}: tensors {describe(name_a)} and {describe(name_b)} overlap in the file")
    file_map = np.memmap(path, dtype=np.uint8, mode="r") if tensors else None
    for e in entries:
        t = tensors[e.name]
        block, block_bytes = GGML_QUANT_SIZES[t.type]
        n = math.prod(t.shape)
        start = data_start + e.offset
        raw = file_map[start : start + n // block * block_bytes]
        rows = n // t.shape[0]
        if t.type == GGMLQuantizationType.F32:
            data = raw.view(np.float32).reshape(rows, t.shape[0]) if len(t.shape) > 1 else raw.view(np.float32)
        elif t.type == GGMLQuantizationType.F16:
            data = raw.view(np.float16).reshape(rows, t.shape[0])
        else:
            data = raw.reshape(rows, -1)
        t.data = data
    return tensors


_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.")


def check_tensors(tensors: dict[str, TensorData], hp: ModelHParams, path: str) -> None:
    # Every layer needs 9 tensors: a block_count the directory can't hold is refused before the
    # expected names of all its layers are built.
    if 9 * hp.n_layer + 2 > len(tensors):
        raise ModelLoadError(f"{path}: {hp.arch}.block_count = {hp.n_layer} needs at least {9 * hp.n_layer + 2} "
                             f"tensors but the file has {len(tensors)}")
    for name in tensors:
        m = _LAYER_TENSOR.match(name)
        if m and int(m.group(1)) >= hp.n_layer:
            raise ModelLoadError(f"{path}: tensor {describe(name)} belongs to no layer ({hp.arch}.block_count = {hp.n_layer})")
    expected, optional = expected_tensor_shapes(hp)
    for name, shape in expected.items():
        if name not in tensors:
            raise ModelLoadError(f"{path}: missing tensor {name!r} (expected shape {list(shape)})")
    for name, t in tensors.items():
        want = expected.get(name, optional.get(name))
        if want is None:
            continue  # tensors we don't use (e.g. rope caches) are ignored
        if tuple(t.shape) != tuple(want):
            raise ModelLoadError(f"{path}: tensor {name!r} has shape {list(t.shape)}, expected {list(want)}")
        if t.type not in SUPPORTED_TYPES:
            names = ", ".join(sorted(x.name for x in SUPPORTED_TYPES))
            raise ModelLoadError(f"{path}: tensor {name!r} has unsupported type {t.type.name} (supported: {names})")
        is_vector = len(want) == 1
        if is_vector and t.type != GGMLQuantizationType.F32:
            raise ModelLoadError(f"{path}: tensor {name!r} is {t.type.name}; norm vectors must be F32")
        if not is_vector and t.cols % 32:
            raise ModelLoadError(f"{path}: tensor {name!r} row length {t.cols} is not a multiple of 32")
        block = GGML_QUANT_SIZES[t.type][0]
        if t.cols % block:
            raise ModelLoadError(f"{path}: tensor {name!r} is {t.type.name} with row length {t.cols}, "
                                 f"not a multiple of {block}")


def read_model_file(path: str) -> GGUFModelFile:
    """Open, parse and validate a GGUF model. Tensor data stays in the mmap until loaded.
    Anything wrong with the file raises ModelLoadError with a one-line message."""
    path = os.fspath(path)
    size = check_file(path)
    metadata, entries, data_start = read_directory(path)
    try:
        check_metadata_types(metadata)
        hp = hparams_from_metadata(metadata)
    except (KeyError, ValueError, TypeError) as e:
        raise ModelLoadError(f"{path}: {e.args[0] if e.args else e}") from None
    tokens = metadata.get("tokenizer.ggml.tokens")
    if tokens is not None and len(tokens) != hp.n_vocab:
        raise ModelLoadError(f"{path}: tokenizer.ggml.tokens has {len(tokens)} tokens but the vocabulary size is {hp.n_vocab}")
    tensors = collect_tensors(path, entries, data_start, size)
    check_tensors(tensors, hp, path)
    if hp.n_vocab != tensors["token_embd.weight"].rows:
        raise ModelLoadError(f"{path}: vocabulary size {hp.n_vocab} differs from token_embd.weight rows")
    return GGUFModelFile(path=path, hparams=hp, metadata=metadata, tensors=tensors, file_bytes=size)
