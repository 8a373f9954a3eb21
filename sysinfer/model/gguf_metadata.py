"""GGUF key/value metadata as plain Python values (str, int, float, bool, lists of them)."""

from __future__ import annotations

from typing import Any

from gguf import GGUFReader, GGUFValueType


def field_value(field) -> Any:
    """One GGUF field as a Python value; arrays of strings become lists of str."""
    if not field.types:
        return None
    if field.types[0] == GGUFValueType.ARRAY:
        if len(field.types) > 1 and field.types[1] == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    if field.types[0] == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")
    value = field.parts[field.data[0]].tolist()[0]
    return bool(value) if field.types[0] == GGUFValueType.BOOL else value


def reader_metadata(reader: GGUFReader) -> dict[str, Any]:
    """Every key of an open GGUF file (the GGUF.* header pseudo-keys excluded)."""
    return {name: field_value(f) for name, f in reader.fields.items() if not name.startswith("GGUF.")}


def read_gguf_metadata(path: str) -> dict[str, Any]:
    """Every key of the GGUF file at `path` (tensor data is not read)."""
    return reader_metadata(GGUFReader(path, "r"))
