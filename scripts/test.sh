#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine: installs the packages,
# builds, and runs every test under ctest. Tests start their own private
# PostgreSQL clusters (set SSLBENCH_TEST_PG to use an existing server).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
start=$(date +%s)
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure "$@"
echo "test: done in $(( $(date +%s) - start )) s"
