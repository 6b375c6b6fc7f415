#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs what the tests need (Python
# packages, redis-server from the OS packages), builds the
# release binary (the polyglot client tests drive it), then the Rust suite, the supply-chain
# checks, the API governance checks and the Node and Python client suites, and last the Python
# sidecar and deployment tests. The output ends with pytest's own summary line.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "Python test dependencies"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    -r tests/python/requirements.txt

step "redis-server for the shared-state tests (tests/redis.rs start their own on 127.0.0.1)"
if ! command -v redis-server >/dev/null; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi
redis-server --version

step "Release build (protoc is vendored: no system protoc needed)"
cargo build --release --locked

step "Rust tests, every workspace member (unit, property, integration over 127.0.0.1)"
cargo test --locked --workspace --all-targets

step "The classifier's output digest over every dev text, in release (lab/tests/equivalence.rs)"
cargo test --locked --release -p threadwarden-lab --test equivalence

step "Supply chain: cargo deny (licences, duplicate versions, sources; deny.toml)"
command -v cargo-deny >/dev/null || cargo install cargo-deny --locked --version 0.20.2
# Advisories need github.com/RustSec/advisory-db, which this environment cannot reach.
cargo deny --log-level error check licenses bans sources

export THREADWARDEN_BIN="$PWD/target/release/threadwarden"

step "Polyglot clients: buf lint/breaking, Node and Python client suites (scripts/test-clients.sh)"
./scripts/test-clients.sh

step "Python: raw grpcio stubs against the release binary; deploy/ manifests and collector config"
python3 -m pytest -q tests/python
