#!/usr/bin/env bash
# The image's build stage (docker/Dockerfile), also run by CI (tests/e2e/test_deploy.py):
# build the sysinfer wheel from SOURCE and collect it with its dependencies' wheels in OUT.
#   bash docker/build-wheel.sh SOURCE OUT [PIP-WHEEL-OPTIONS...]
# (CI passes --no-build-isolation: its environment has the build requirements, and the source
# tree's CMake build folder is reused.)
set -euo pipefail
src=${1:?source folder}
out=${2:?output folder}
shift 2
mkdir -p "$out"
python3 -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$out" "$@" "$src"
ls "$out"/sysinfer-*.whl >/dev/null
