#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs what the tests need, builds the
# release binary (the polyglot client tests drive it), then the Rust suite, then the Python suite.
# The output ends with pytest's own summary line.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "Python test dependencies"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    -r tests/python/requirements.txt

step "Release build (protoc is vendored: no system protoc needed)"
cargo build --release --locked

step "Rust tests (unit, property, integration over 127.0.0.1)"
cargo test --locked --all-targets

step "Python client tests against the release binary"
THREADWARDEN_BIN="$PWD/target/release/threadwarden" python3 -m pytest -q tests/python
