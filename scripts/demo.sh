#!/usr/bin/env bash
# The demo on a fresh Debian 12 machine: installs, builds, then runs the study
# in small: a model zoo pre-trained here and a domain-shift suite made from
# Fashion-MNIST (both cached), a local stack (private PostgreSQL, a
# coordinator, workers), every probe protocol, the zoo's accuracies and which
# in-domain protocol predicts out-of-domain accuracy. Extra arguments go to
# `sslbench demo` (e.g. --train_per_domain=3000 --steps=100).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
exec "${BUILD_DIR:-build}/bin/sslbench" demo "$@"
