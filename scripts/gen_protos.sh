#!/usr/bin/env bash
# Regenerates the committed Python code for proto/fedvox/v1/*.proto.
# CI runs it and fails if the output differs from what is committed.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m grpc_tools.protoc -I proto \
  --python_out=proto --pyi_out=proto --grpc_python_out=proto \
  --mypy_grpc_out=proto \
  proto/fedvox/v1/*.proto
