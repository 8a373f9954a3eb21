#!/usr/bin/env bash
# The NUMA tests on a kernel that really has two nodes: boots this machine's kernel under qemu (software
# emulation) with virtme-ng, `--numa 2G,cpus=0 --numa 2G,cpus=1`, and runs tests/native/test_numa_vm.py's
# `inside` tests there on every tiny model kind (CI runs the llama one only). Needs, once, as root:
#   apt-get install -y qemu-system-x86 linux-image-amd64 busybox-static && pip install virtme-ng
# Usage: scripts/numa_vm.sh [model kinds, comma-separated; default llama,baichuan-rope,baichuan-alibi]
# Run it where the installed sysinfer (with its compiled core) is importable (PYTHONPATH as for pytest).
set -euo pipefail
tests="$(cd "$(dirname "$0")/../tests" && pwd)"
cd /  # never import the source folder instead of the installed package
SYSINFER_NUMA_VM_KINDS="${1:-llama,baichuan-rope,baichuan-alibi}" \
  exec python3 -m pytest -p no:cacheprovider -q -s --durations=0 "$tests/native/test_numa_vm.py" -k two_node_kernel
