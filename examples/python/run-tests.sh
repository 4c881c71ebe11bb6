#!/usr/bin/env bash
# Runs the Python client's tests against a freshly started discovered server.
# Creates .venv here, installs requirements.txt into it, generates the gRPC
# code into ./generated, builds the server unless DISCOVERED_BIN is set, and
# runs pytest (whose summary line is the last thing printed).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="$HERE/.venv"
cd "$HERE"

if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "error: the Python venv module is missing." >&2
    pyver="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    echo "Install it with:  sudo apt-get install python3-venv   (or: sudo apt-get install python${pyver}-venv)" >&2
    exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating virtualenv in $VENV"
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"

echo "==> installing requirements.txt into $VENV"
"$PY" -m pip install --quiet --disable-pip-version-check -r requirements.txt

echo "==> generating gRPC code into $HERE/generated"
rm -rf "$HERE/generated"
mkdir -p "$HERE/generated"
"$PY" -m grpc_tools.protoc \
    -I "$REPO/proto" \
    --python_out="$HERE/generated" \
    --grpc_python_out="$HERE/generated" \
    "$REPO/proto/discovered/v1/discovery.proto"

if [ -z "${DISCOVERED_BIN:-}" ]; then
    echo "==> building the server (cargo build)"
    (cd "$REPO" && cargo build)
    export DISCOVERED_BIN="$REPO/target/debug/discovered"
fi

echo "==> running pytest"
exec "$PY" -m pytest -v "$HERE/test_discovery_client.py"
