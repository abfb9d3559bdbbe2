#!/usr/bin/env bash
# The `stack` story (the README's first command) must walk every step and exit 0.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo run -q -p palisade-examples --bin stack
