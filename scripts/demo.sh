#!/usr/bin/env bash
# The demo on a fresh Debian 12 machine: installs, builds, then runs a local
# stack (private PostgreSQL, a coordinator, workers) and a kNN study of two
# models on Fashion-MNIST, and prints the results. Extra arguments go to
# `sslbench demo` (e.g. --workers=2 --train_limit=10000).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
exec "${BUILD_DIR:-build}/bin/sslbench" demo "$@"
