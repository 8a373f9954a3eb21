"""sysinfer: a CPU inference server for GGUF language models."""

__version__ = "0.1.0"


def native_info() -> dict:
    """Which kernels the native core runs on this CPU, and what the CPU offers."""
    from . import _native

    return _native.info()
