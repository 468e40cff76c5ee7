#!/bin/bash
# Unpacks Debian 12's Abseil (headers, CMake config, shared libraries) into
# .gpu-deps/ so that the compute core builds on a GPU machine that has CUDA,
# PyTorch's LibTorch, zlib, libjpeg and libpng but no Abseil and no package
# manager: carry .gpu-deps/ (ignored by git) to that machine with the tree.
# Run on a Debian 12 machine with its package archive reachable.
set -euo pipefail
cd "$(dirname "$0")/../.."
dest=.gpu-deps
rm -rf "$dest" && mkdir -p "$dest"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download libabsl-dev libabsl20220623 >/dev/null)
for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$dest"; done
du -sh "$dest"
