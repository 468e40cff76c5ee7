#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine: installs the packages,
# builds, and runs every test under ctest. Tests start their own private
# PostgreSQL clusters (set SSLBENCH_TEST_PG to use an existing server).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
start=$(date +%s)
# Spinning OpenMP threads starve the other processes of an end-to-end test
# (coordinator, workers, PostgreSQL) on a small machine.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure "$@"
echo "test: done in $(( $(date +%s) - start )) s"
