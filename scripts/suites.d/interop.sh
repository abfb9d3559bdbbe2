#!/usr/bin/env bash
# The interop suite: a Python gRPC client (grpcio) and PyJWT, which no one here wrote, against
# the `server` example. Sets up its own virtual environment in tests/interop/.venv.
set -euo pipefail
cd "$(dirname "$0")/../.."

venv=tests/interop/.venv
if [ ! -x "$venv/bin/python" ] || ! cmp -s tests/interop/requirements.txt "$venv/requirements.txt"; then
    echo "creating $venv"
    rm -rf "$venv"
    if ! python3 -m venv "$venv" 2>/dev/null; then
        # Debian's python3 keeps venv in a package of its own.
        rm -rf "$venv"
        apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install -q --disable-pip-version-check -r tests/interop/requirements.txt
    cp tests/interop/requirements.txt "$venv/requirements.txt"
fi

cargo build -q -p palisade-examples --bin server
target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
export PALISADE_SERVER_BIN="$target_dir/debug/server"
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/interop
