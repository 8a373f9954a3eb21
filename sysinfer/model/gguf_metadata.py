"""A fast GGUF header reader: key/value metadata as plain Python values and the tensor directory.

The `gguf` package's reader builds a numpy view for every element of every array (seconds for a
280k-merge vocabulary); this reads the same header with struct and numpy in one pass. Layout (v2/v3):
magic "GGUF", version u32, tensor count u64, kv count u64, then kv pairs (key string, value type u32,
value), then per tensor (name, n_dims u32, dims u64[n], type u32, offset u64), then tensor data at the
next multiple of general.alignment (32 by default).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

_SCALARS = {  # value type -> (struct format, size)
    0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
    6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8),
}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8", 12: "<f8"}
STRING, ARRAY = 8, 9


class GGUFFormatError(ValueError):
    """The header is not valid GGUF (truncated, corrupt, or an unknown value type)."""


@dataclass
class TensorEntry:
    name: str
    shape: tuple[int, ...]  # GGUF order: shape[0] is the row length (ne0)
    type: int               # GGML type id
    offset: int             # from the start of the data section


class _Cursor:
    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise GGUFFormatError(f"header ends early (needed {n} bytes at offset {self.pos} of {len(self.buf)})")
        view = memoryview(self.buf)[self.pos : self.pos + n]
        self.pos += n
        return view

    def scalar(self, vtype: int):
        fmt, size = _SCALARS[vtype]
        return struct.unpack(fmt, self.take(size))[0]

    def string(self) -> str:
        return bytes(self.take(self.scalar(10))).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype == STRING:
            return self.string()
        if vtype in _SCALARS:
            return self.scalar(vtype)
        if vtype != ARRAY:
            raise GGUFFormatError(f"unknown metadata value type {vtype}")
        etype, count = self.scalar(4), self.scalar(10)
        if etype == STRING:
            return [self.string() for _ in range(count)]
        if etype in _NUMPY:
            dtype = np.dtype(_NUMPY[etype])
            values = np.frombuffer(self.take(count * dtype.itemsize), dtype=dtype).tolist()
            return [bool(v) for v in values] if etype == 7 else values
        if etype == ARRAY:
            return [self.value(ARRAY) for _ in range(count)]
        raise GGUFFormatError(f"unknown array element type {etype}")


def read_header(path: str) -> tuple[int, dict[str, Any], list[TensorEntry], int]:
    """(version, metadata, tensor directory, absolute offset of the data section)."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _Cursor(buf)
        if bytes(cur.take(4)) != b"GGUF":
            raise GGUFFormatError("not a GGUF file")
        version = cur.scalar(4)
        n_tensors, n_kv = cur.scalar(10), cur.scalar(10)
        if n_tensors > 10**7 or n_kv > 10**7:
            raise GGUFFormatError(f"implausible counts: {n_tensors} tensors, {n_kv} keys")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            meta[key] = cur.value(cur.scalar(4))
        tensors = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.scalar(4)
            if n_dims > 8:
                raise GGUFFormatError(f"tensor {name!r} has {n_dims} dimensions")
            shape = tuple(cur.scalar(10) for _ in range(n_dims))
            tensors.append(TensorEntry(name, shape, cur.scalar(4), cur.scalar(10)))
        align = meta.get("general.alignment", 32)
        if not isinstance(align, int) or align <= 0:
            raise GGUFFormatError(f"general.alignment = {align!r}")
        data_start = (cur.pos + align - 1) // align * align
        del cur  # release the memoryview before the mmap closes
        return version, meta, tensors, data_start


def read_gguf_metadata(path: str) -> dict[str, Any]:
    """Every key of the GGUF file at `path` (tensor data is not read)."""
    return read_header(path)[1]
