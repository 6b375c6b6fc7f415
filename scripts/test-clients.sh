#!/usr/bin/env bash
# The polyglot client suite, against the real release binary:
#   1. installs buf (tools/buf), the Node client (clients/node) and the Python client with its
#      test dependencies (clients/python), pinned;
#   2. API governance (scripts/check-proto.sh): buf lint, and buf breaking against the previous
#      commit's proto (BUF_AGAINST_REF, default HEAD~1);
#   3. the Node client's tests (node --test), including the Node example chat server;
#   4. the Python client's tests (pytest), including the Python example chat server.
# The output ends with pytest's own summary line.
#
# THREADWARDEN_BIN: the release binary (default target/release/threadwarden; not built here).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

bin="${THREADWARDEN_BIN:-target/release/threadwarden}"
case "$bin" in /*) ;; *) bin="$ROOT/$bin" ;; esac
export THREADWARDEN_BIN="$bin"
if [ ! -x "$THREADWARDEN_BIN" ]; then
    echo "error: no release binary at $THREADWARDEN_BIN (cargo build --release, or set THREADWARDEN_BIN)" >&2
    exit 1
fi

step() { printf '\n==> %s\n' "$*"; }

step "Installing buf, the Node client and the Python client (pinned)"
npm ci --prefix tools/buf --no-audit --no-fund --loglevel=error
npm ci --prefix clients/node --no-audit --no-fund --loglevel=error
rm -rf clients/python/build  # stale files from an earlier build must not reach the wheel
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "./clients/python[test]"

step "API governance: buf lint and buf breaking (scripts/check-proto.sh)"
./scripts/check-proto.sh

step "Node client tests against $THREADWARDEN_BIN"
# --test-force-exit: once every test has finished, the runner exits even if a test file left a
# handle open. The outer timeout bounds a file process that never returns to its event loop
# (seen once, in December 2026: every test passed, then a test file spun at full CPU for 15
# minutes with no system call). Such a run is repeated once, and says so; a second hang fails.
node_tests() { (cd clients/node && timeout 600 node --test --test-force-exit test/*.test.js); }
node_tests || { rc=$?; [ "$rc" -eq 124 ] || exit "$rc"; echo "node tests hung (timeout); running them once more"; node_tests; }

step "Python client tests against $THREADWARDEN_BIN"
python3 -m pytest -q clients/python/tests
