"""A fast GGUF header reader: key/value metadata as plain Python values and the tensor directory.

The `gguf` package's reader builds a numpy view for every element of every array (seconds for a
280k-merge vocabulary); this reads the same header with struct and numpy in one pass. Layout (v2/v3):
magic "GGUF", version u32, tensor count u64, kv count u64, then kv pairs (key string, value type u32,
value), then per tensor (name, n_dims u32, dims u64[n], type u32, offset u64), then tensor data at the
next multiple of general.alignment (32 by default).

The file is hostile until proven otherwise: every count and length is checked against the bytes
left in the file *before* anything is allocated or looped over (an array of 2^60 strings needs at
least 2^63 bytes, so it is refused at once), and every message quotes file content through
`describe`, which keeps it short.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

_SCALARS = {  # value type -> (struct format, size)
    0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
    6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8),
}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8", 12: "<f8"}
STRING, ARRAY = 8, 9
SUPPORTED_VERSIONS = (2, 3)

MAX_TENSORS = 1 << 16     # tensors in a file (Llama 3.1 405B has about 1,300)
MAX_KEYS = 1 << 16        # metadata keys (real files: about 40)
MAX_DIMS = 4              # GGML_MAX_DIMS
MAX_TENSOR_NAME = 256     # bytes (llama.cpp allows 63)
MAX_KEY = 1024            # bytes of a metadata key
MAX_ARRAY_DEPTH = 3       # arrays of arrays of arrays at most (GGUF files use one level)
MAX_STRING = 16 << 20     # bytes of a metadata string (chat templates: tens of KB)
MAX_ARRAY_STRING = 1 << 16  # bytes of a string inside an array (tokens, merges)
MAX_ARRAY = 1 << 22       # elements of one metadata array (vocabularies and merge lists: < 10^6)
MAX_ARRAY_TOTAL = 1 << 23  # elements of all metadata arrays together (each costs a Python object)
MAX_ALIGNMENT = 1 << 20
MAX_DIM = (1 << 63) - 1   # a dimension must fit an int64 (ggml's ne)
MAX_MESSAGE_VALUE = 200   # characters of a quoted value in an error message


GGUF_MAGIC = b"GGUF"


class GGUFFormatError(ValueError):
    """The header is not valid GGUF (truncated, corrupt, or an unknown value type)."""


class NotGGUFError(GGUFFormatError):
    """Not GGUF at all (wrong magic) or a GGUF version we don't read."""


def describe(value: Any, limit: int = MAX_MESSAGE_VALUE) -> str:
    """A short repr of a value read from a file, for error messages: strings and bytes are cut to
    `limit` characters, lists are summarized. Never longer than about limit + 40 characters."""
    if isinstance(value, (list, tuple)):
        kinds = sorted({type(v).__name__ for v in value[:1000]})
        return f"<array of {len(value)} {'/'.join(kinds) or 'values'}>"
    if isinstance(value, (str, bytes, bytearray)):
        text = repr(value[:limit])  # escapes can make it up to 10 times longer: cut it again
        if len(value) <= limit and len(text) <= limit + 2:
            return text
        return f"{text[:limit]}... ({len(value)} {'chars' if isinstance(value, str) else 'bytes'})"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


@dataclass
class TensorEntry:
    name: str
    shape: tuple[int, ...]  # GGUF order: shape[0] is the row length (ne0)
    type: int               # GGML type id
    offset: int             # from the start of the data section


# record(kind, offset, size, label): called for every fixed-size header field while reading, when
# given. Kinds: "version", "count" (tensor/kv/array counts), "length" (string lengths), "type"
# (value, element and tensor types), "ndims", "dim", "offset", "value" (scalar values).
Recorder = Callable[[str, int, int, str], None]


class _Cursor:
    def __init__(self, buf, record: Recorder | None = None):
        self.buf, self.pos, self.record = buf, 0, record
        self.array_elements = 0  # read so far, across all arrays

    @property
    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int, what: str = "data") -> memoryview:
        if n < 0 or n > self.remaining:
            raise GGUFFormatError(
                f"header ends early: {what} needs {n} bytes at offset {self.pos} but the file has {len(self.buf)} (truncated?)"
            )
        view = memoryview(self.buf)[self.pos : self.pos + n]
        self.pos += n
        return view

    def scalar(self, vtype: int, kind: str = "value", label: str = ""):
        fmt, size = _SCALARS[vtype]
        if self.record is not None:
            self.record(kind, self.pos, size, label)
        return struct.unpack(fmt, self.take(size, label or kind))[0]

    def count(self, label: str, min_item_bytes: int) -> int:
        """A u64 count of items of at least min_item_bytes each, checked against the bytes left."""
        n = self.scalar(10, "count", label)
        if label.endswith("array count"):
            # a list of n Python objects costs far more than n bytes of file: bound them absolutely
            self.array_elements += n
            if n > MAX_ARRAY or self.array_elements > MAX_ARRAY_TOTAL:
                raise GGUFFormatError(f"{label} = {n} is more than this reader allows ({MAX_ARRAY} per array, "
                                      f"{MAX_ARRAY_TOTAL} in all)")
        if n * min_item_bytes > self.remaining:
            raise GGUFFormatError(
                f"{label} = {n} needs at least {n * min_item_bytes} bytes but only {self.remaining} remain (corrupt count)"
            )
        return n

    def string(self, label: str, limit: int | None = None) -> str:
        n = self.scalar(10, "length", label)
        if limit is not None and n > limit:
            raise GGUFFormatError(f"{label} is {n} bytes long (at most {limit} allowed)")
        return bytes(self.take(n, label)).decode("utf-8", errors="replace")

    def value(self, vtype: int, label: str, depth: int = 0) -> Any:
        if vtype == STRING:
            return self.string(label, MAX_STRING)
        if vtype in _SCALARS:
            return self.scalar(vtype, "value", label)
        if vtype != ARRAY:
            raise GGUFFormatError(f"{label}: unknown metadata value type {vtype}")
        if depth >= MAX_ARRAY_DEPTH:
            raise GGUFFormatError(f"{label}: arrays nested more than {MAX_ARRAY_DEPTH} deep")
        etype = self.scalar(4, "type", f"{label} element type")
        if etype == STRING:
            count = self.count(f"{label} array count", 8)
            return [self.string(f"{label} element", MAX_ARRAY_STRING) for _ in range(count)]
        if etype in _NUMPY:
            dtype = np.dtype(_NUMPY[etype])
            count = self.count(f"{label} array count", dtype.itemsize)
            values = np.frombuffer(self.take(count * dtype.itemsize, label), dtype=dtype).tolist()
            return [bool(v) for v in values] if etype == 7 else values
        if etype == ARRAY:
            count = self.count(f"{label} array count", 12)  # each: element type u32 + count u64
            return [self.value(ARRAY, label, depth + 1) for _ in range(count)]
        raise GGUFFormatError(f"{label}: unknown array element type {etype}")


def parse_header(buf, record: Recorder | None = None) -> tuple[int, dict[str, Any], list[TensorEntry], int]:
    """(version, metadata, tensor directory, absolute offset of the data section) of GGUF bytes."""
    cur = _Cursor(buf, record)
    magic = bytes(buf[:4])
    if magic != GGUF_MAGIC:
        raise NotGGUFError(f"not a GGUF file: magic is {describe(magic)}, expected {GGUF_MAGIC!r}")
    cur.take(4, "magic")
    version = cur.scalar(4, "version", "version")
    if version not in SUPPORTED_VERSIONS:
        raise NotGGUFError(f"GGUF version {version} is not supported (expected one of {SUPPORTED_VERSIONS})")
    # each tensor entry takes at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset) bytes;
    # each key/value at least 8 (key length) + 4 (type) + 1 (a u8 value)
    n_tensors = cur.count("tensor count", 24)
    n_kv = cur.count("metadata key count", 13)
    if n_tensors > MAX_TENSORS or n_kv > MAX_KEYS:
        raise GGUFFormatError(f"implausible counts: {n_tensors} tensors (at most {MAX_TENSORS}), "
                              f"{n_kv} metadata keys (at most {MAX_KEYS})")
    meta: dict[str, Any] = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key #{i}", MAX_KEY)
        if key in meta:
            raise GGUFFormatError(f"metadata key {describe(key)} appears twice")
        meta[key] = cur.value(cur.scalar(4, "type", f"{key} value type"), key)
    tensors = []
    for i in range(n_tensors):
        name = cur.string(f"name of tensor #{i}", MAX_TENSOR_NAME)
        n_dims = cur.scalar(4, "ndims", f"{name} n_dims")
        if not 1 <= n_dims <= MAX_DIMS:
            raise GGUFFormatError(f"tensor {describe(name)} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
        shape = tuple(cur.scalar(10, "dim", f"{name} dim {d}") for d in range(n_dims))
        if any(d == 0 or d > MAX_DIM for d in shape):
            raise GGUFFormatError(f"tensor {describe(name)} has shape {list(shape)}: every dimension must be 1 to 2^63-1")
        tensors.append(TensorEntry(name, shape, cur.scalar(4, "type", f"{name} type"), cur.scalar(10, "offset", f"{name} offset")))
    align = meta.get("general.alignment", 32)
    if isinstance(align, bool) or not isinstance(align, int) or not 0 < align <= MAX_ALIGNMENT or align & (align - 1):
        raise GGUFFormatError(f"general.alignment = {describe(align)} is not a power of two up to {MAX_ALIGNMENT}")
    for t in tensors:
        if t.offset % align:
            raise GGUFFormatError(f"tensor {describe(t.name)} offset {t.offset} is not a multiple of the alignment {align}")
    data_start = (cur.pos + align - 1) // align * align
    return version, meta, tensors, data_start


def read_header(path: str, record: Recorder | None = None) -> tuple[int, dict[str, Any], list[TensorEntry], int]:
    """(version, metadata, tensor directory, absolute offset of the data section)."""
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            raise GGUFFormatError("the file is empty")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return parse_header(buf, record)


def read_gguf_header(path: str) -> dict[str, Any]:
    """Every key of the GGUF file at `path` (tensor data is not read)."""
    return read_header(path)[1]
