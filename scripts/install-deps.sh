#!/usr/bin/env bash
# Installs what sslbench needs to build, test and run on Debian 12 (as root,
# or through sudo). Idempotent: returns at once when everything is present.
#   scripts/install-deps.sh           everything (build, tests, benchmarks)
#   scripts/install-deps.sh --build   only what building the binaries needs
#                                     (the container images' build stage)
set -euo pipefail

BUILD_PACKAGES=(
  build-essential cmake pkg-config
  protobuf-compiler protobuf-compiler-grpc libprotobuf-dev libgrpc++-dev
  libabsl-dev libtorch-dev libopenblas0-openmp
  libpqxx-dev libssl-dev zlib1g-dev libyaml-cpp-dev libjpeg62-turbo-dev libpng-dev
  prometheus-cpp-dev
)
TEST_PACKAGES=(
  libgtest-dev libgmock-dev
  # libFuzzer targets (tests/fuzz) build with clang.
  clang
  postgresql postgresql-client
  dataset-fashion-mnist
  # Reference implementations for parity tests and benchmarks only.
  python3 python3-numpy python3-scipy python3-sklearn python3-torch
  python3-torchvision python3-pil python3-skimage
  # Opens the study report in the end-to-end test (headless).
  chromium
  # `ip netns`: the end-to-end test that cuts a worker off the network.
  iproute2
  # The Python client (python/) and its test; pandas for DataFrames.
  python3-grpcio python3-protobuf python3-pandas
  # Offline checks of deploy/: YAML, and promtool for the alert rule tests.
  python3-yaml prometheus
)

case "${1:-}" in
  "") PACKAGES=("${BUILD_PACKAGES[@]}" "${TEST_PACKAGES[@]}") ;;
  --build) PACKAGES=("${BUILD_PACKAGES[@]}") ;;
  *) echo "usage: $0 [--build]" >&2; exit 64 ;;
esac

missing=()
for p in "${PACKAGES[@]}"; do
  if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
# Installing the server package may start Debian's own cluster; sslbench uses
# private clusters on free ports and does not need it.
# Only promtool is used from the prometheus package; where systemd started
# its server, stop it.
if command -v systemctl >/dev/null 2>&1; then
  $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
