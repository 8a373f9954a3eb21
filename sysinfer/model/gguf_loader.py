"""Reading and validating a GGUF model file before any arithmetic.

Everything that can be wrong with a file (magic, version, keys, tensor names, shapes, types, data
past the end of the file) is found here and reported as one ModelLoadError naming what was wrong.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from .architecture import ModelHParams, expected_tensor_shapes, hparams_from_metadata
from .gguf_metadata import GGUFFormatError, TensorEntry, read_header

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
SUPPORTED_TYPES = {
    GGMLQuantizationType.F32,
    GGMLQuantizationType.F16,
    GGMLQuantizationType.Q4_0,
    GGMLQuantizationType.Q4_1,
    GGMLQuantizationType.Q8_0,
    GGMLQuantizationType.Q6_K,
}


class ModelLoadError(Exception):
    """A model file that can't be served; the message names the key or tensor at fault."""


@dataclass
class TensorData:
    name: str
    type: GGMLQuantizationType
    shape: tuple[int, ...]  # GGUF order: shape[0] is the row length (ne0)
    data: np.ndarray        # the file's bytes (a view of the mmap)

    @property
    def rows(self) -> int:
        return int(np.prod(self.shape[1:])) if len(self.shape) > 1 else 1

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
        return sum(int(np.prod(t.shape)) for t in self.tensors.values())


def check_header(path: str) -> int:
    """Magic and version, read directly so a wrong file gets a precise message. Returns file size."""
    if not os.path.isfile(path):
        raise ModelLoadError(f"{path}: no such file")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise ModelLoadError(f"{path}: file is {size} bytes, too short to be GGUF (truncated?)")
    if head[:4] != GGUF_MAGIC:
        raise ModelLoadError(f"{path}: not a GGUF file: magic is {head[:4]!r}, expected {GGUF_MAGIC!r}")
    (version,) = struct.unpack("<I", head[4:8])
    if version not in SUPPORTED_VERSIONS:
        raise ModelLoadError(f"{path}: GGUF version {version} is not supported (expected one of {SUPPORTED_VERSIONS})")
    return size


def read_directory(path: str) -> tuple[dict[str, Any], list[TensorEntry], int]:
    try:
        _, metadata, entries, data_start = read_header(path)
    except (GGUFFormatError, UnicodeDecodeError, OverflowError, MemoryError) as e:
        raise ModelLoadError(f"{path}: corrupt or truncated GGUF file ({e})") from None
    return metadata, entries, data_start


def collect_tensors(path: str, entries: list[TensorEntry], data_start: int, file_size: int) -> dict[str, TensorData]:
    """Views of each tensor's bytes in one read-only mmap of the file (nothing is read yet)."""
    file_map = np.memmap(path, dtype=np.uint8, mode="r")
    tensors: dict[str, TensorData] = {}
    for e in entries:
        try:
            qtype = GGMLQuantizationType(e.type)
        except ValueError:
            raise ModelLoadError(f"{path}: tensor {e.name!r} has unknown type id {e.type}") from None
        if e.name in tensors:
            raise ModelLoadError(f"{path}: tensor {e.name!r} appears twice")
        block, block_bytes = GGML_QUANT_SIZES[qtype]
        n = int(np.prod(e.shape)) if e.shape else 1
        if not e.shape or e.shape[0] % block:
            raise ModelLoadError(f"{path}: tensor {e.name!r} shape {list(e.shape)} does not fit {qtype.name} blocks of {block}")
        n_bytes = n // block * block_bytes
        start = data_start + e.offset
        if start + n_bytes > file_size:
            raise ModelLoadError(
                f"{path}: tensor {e.name!r} data ends at byte {start + n_bytes} but the file has {file_size} bytes (truncated?)"
            )
        raw = file_map[start : start + n_bytes]
        rows = n // e.shape[0]
        if qtype == GGMLQuantizationType.F32:
            data = raw.view(np.float32).reshape(rows, e.shape[0]) if len(e.shape) > 1 else raw.view(np.float32)
        elif qtype == GGMLQuantizationType.F16:
            data = raw.view(np.float16).reshape(rows, e.shape[0])
        else:
            data = raw.reshape(rows, -1)
        tensors[e.name] = TensorData(e.name, qtype, tuple(int(d) for d in e.shape), data)
    return tensors


def check_tensors(tensors: dict[str, TensorData], hp: ModelHParams, path: str) -> None:
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
        if t.type == GGMLQuantizationType.Q6_K and t.cols % 256:
            raise ModelLoadError(f"{path}: tensor {name!r} is Q6_K with row length {t.cols}, not a multiple of 256")


def read_model_file(path: str) -> GGUFModelFile:
    """Open, parse and validate a GGUF model. Tensor data stays in the mmap until loaded."""
    path = os.fspath(path)
    size = check_header(path)
    metadata, entries, data_start = read_directory(path)
    try:
        hp = hparams_from_metadata(metadata)
    except (KeyError, ValueError, TypeError) as e:
        raise ModelLoadError(f"{path}: {e.args[0] if e.args else e}") from None
    tensors = collect_tensors(path, entries, data_start, size)
    check_tensors(tensors, hp, path)
    if hp.n_vocab != tensors["token_embd.weight"].rows:
        raise ModelLoadError(f"{path}: vocabulary size {hp.n_vocab} differs from token_embd.weight rows")
    return GGUFModelFile(path=path, hparams=hp, metadata=metadata, tensors=tensors, file_bytes=size)
