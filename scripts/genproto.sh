#!/usr/bin/env bash
# Regenerates the Python protobuf and gRPC modules (and their .pyi stubs) from server/api/**/*.proto.
# Usage: scripts/genproto.sh [OUTDIR]   (default: the source tree; tests pass a temp dir to check sync)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.}
py=${PYTHON:-.venv/bin/python}
bindir=$(dirname "$py")
mapfile -t protos < <(find server/api -name '*.proto' | sort)
PATH="$bindir:$PATH" "$py" -m grpc_tools.protoc -I . \
  --python_out="$out" --grpc_python_out="$out" \
  --mypy_out="quiet:$out" --mypy_grpc_out="quiet:$out" \
  "${protos[@]}"
for d in server/api "server/api/"*/; do touch "$out/$d/__init__.py"; done
