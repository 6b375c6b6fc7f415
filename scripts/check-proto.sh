#!/usr/bin/env bash
# API governance for proto/: `buf lint` (STANDARD and COMMENTS rules, buf.yaml) and `buf breaking`
# against the previous commit's proto. Uses the buf pinned in tools/buf (npm ci --prefix tools/buf).
#
# BUF_AGAINST_REF: the commit to compare with (default HEAD~1). Skipped, saying why, when there is
# no such commit (first commit, shallow clone, not a git checkout) or it has no proto yet.
set -euo pipefail
cd "$(dirname "$0")/.."
buf="$PWD/tools/buf/node_modules/.bin/buf"
[ -x "$buf" ] || { echo "error: buf is not installed: npm ci --prefix tools/buf" >&2; exit 1; }

"$buf" lint
echo "buf lint: ok"

against="${BUF_AGAINST_REF:-HEAD~1}"
if ! command -v git >/dev/null || ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    echo "buf breaking: skipped: not a git checkout"
elif ! sha="$(git rev-parse --verify --quiet "$against^{commit}")"; then
    echo "buf breaking: skipped: there is no commit $against here (first commit, or a shallow clone)"
elif ! git cat-file -e "$sha:proto/threadwarden/v1/moderation.proto" 2>/dev/null; then
    echo "buf breaking: skipped: $against ($sha) has no proto/threadwarden/v1/moderation.proto yet"
else
    "$buf" breaking --against ".git#ref=$sha,subdir=proto"
    echo "buf breaking: ok against $against ($sha)"
fi
