"""GGUF model files, in three steps, one module each:
- gguf_header.py parses the header (metadata and tensor directory), bounding every count first;
- model_file.py validates a file for serving (architecture, tensor names, shapes and types) into a
  GGUFModelFile, or raises ModelLoadError naming what is wrong;
- native_model.py packs a validated file into the native core: LoadedModel, whose step() is the
  one native call per engine step.
Beside them: architecture.py (hyperparameters), the tokenizers, chat templates (file templates
render in limited worker processes: template_worker.py), synth.py (random-weight files)."""

from .model_file import ModelLoadError, read_model_file
from .native_model import LoadedModel, load_model

# Every tokenizer kind, so Tokenizer.from_metadata knows them all (each registers itself by its
# tokenizer.ggml.model; tokenizer.py, their base, imports none of them).
from . import bpe_tokenizer, spm_tokenizer, wordpiece_tokenizer, unigram_tokenizer  # noqa: E402,F401

__all__ = ["LoadedModel", "ModelLoadError", "load_model", "read_model_file"]
