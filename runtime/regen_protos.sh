#!/usr/bin/env bash
# Regenerates runtime/proto/*_pb2*.py from runtime/proto/*.proto. Needs grpcio-tools (the `test` extra).
# Run from anywhere; the generated code imports as `runtime.proto.head_pb2`.
#
# The generated code would refuse any protobuf or grpcio older than the generator's; a node runs what its
# own Python can have (Python 3.9's newest are protobuf 6.33 and grpcio 1.80), so the version checks are
# taken out / lowered to the floors lifecycle/runtime_bundle.py resolves for (NODE_REQUIREMENTS), which
# the tests run on (tests/test_node_images.py).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. runtime/proto/*.proto
python - <<'PY'
import re
from pathlib import Path

pb2 = Path("runtime/proto/head_pb2.py")
text = pb2.read_text()
text = re.sub(r"from google\.protobuf import runtime_version as _runtime_version\n", "", text)
text = re.sub(r"_runtime_version\.ValidateProtobufRuntimeVersion\([^)]*\)\n", "", text)
pb2.write_text(text)
grpc = Path("runtime/proto/head_pb2_grpc.py")
grpc.write_text(re.sub(r"GRPC_GENERATED_VERSION = '[^']*'", "GRPC_GENERATED_VERSION = '1.66.0'", grpc.read_text()))
PY
