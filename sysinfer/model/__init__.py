"""GGUF reading and validation, architectures, loading into the native core."""

from .gguf_loader import ModelLoadError, read_model_file
from .loader import LoadedModel, load_model

__all__ = ["LoadedModel", "ModelLoadError", "load_model", "read_model_file"]
