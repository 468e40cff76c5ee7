#!/usr/bin/env bash
# Regenerates the Python modules of the client API from proto/ into
# python/sslbench/v1 (or into the folder given as $1).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here}"
mkdir -p "$out/sslbench/v1"
protoc -I "$here/../proto" --python_out="$out" --grpc_python_out="$out" \
  --plugin=protoc-gen-grpc_python="$(command -v grpc_python_plugin)" \
  "$here/../proto/sslbench/v1/types.proto" "$here/../proto/sslbench/v1/client_api.proto"
rm -f "$out/sslbench/v1/types_pb2_grpc.py"
