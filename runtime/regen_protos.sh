#!/usr/bin/env bash
# Regenerates runtime/proto/*_pb2*.py from runtime/proto/*.proto. Needs grpcio-tools (the `test` extra).
# Run from anywhere; the generated code imports as `runtime.proto.head_pb2`.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. runtime/proto/*.proto
