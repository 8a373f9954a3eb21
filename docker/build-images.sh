#!/usr/bin/env bash
# Builds both images with Docker buildx (needs a Docker engine; on x86-64, qemu binfmt for arm64).
#   bash docker/build-images.sh [TAG_PREFIX]   -> sysinfer:0.1.0-openeuler24.03-{aarch64,x86_64}
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:-sysinfer:0.1.0-openeuler24.03}
docker buildx build --platform linux/arm64 -f docker/Dockerfile -t "$prefix-aarch64" --load .
docker buildx build --platform linux/amd64 -f docker/Dockerfile -t "$prefix-x86_64" --load .
