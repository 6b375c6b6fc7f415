#!/usr/bin/env bash
# What the external classifier tier costs (issue 19), in one run on one machine, against the
# same binary with the tier off (loadgen's baseline, "echo" in its tables):
#   off-vs-never   the tier configured (--external-url to a local fake) but never called
#                  (--external-when never): every event takes the ordered in-flight path.
#                  Scenarios pipelined (1 stream), streams (64), latency (1 stream, 5,000/s).
#   uncertain      the same, --external-when uncertain (the default): only events the built-in
#                  tiers are unsure of are sent; the fake counts them.
#   always         --external-when always against a fake answering in DELAY (5ms): every user
#                  message waits on a call; one stream, window 1024. The target is
#                  STREAM_IN_FLIGHT (32) / DELAY events/s on one stream.
# Fresh processes for every scenario (loadgen), RUNS interleaved rounds, medians.
# Writes $OUT/external.md (also printed) and the raw JSON per round.
#
#   scripts/bench-external.sh         # about 5 minutes on 2 cores, after the build
#
# Knobs: OUT (target/bench-external), RUNS (3), DURATION (5s), WARMUP (1s), DELAY (5ms).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/bench-external}
RUNS=${RUNS:-3}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
DELAY=${DELAY:-5ms}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

cargo build --release --locked -p threadwarden --bin threadwarden -p threadwarden-bench --bin threadwarden-bench
cp target/release/threadwarden target/release/threadwarden-bench "$OUT/"

"$OUT/threadwarden-bench" fake-guard --delay "$DELAY" >"$OUT/fake.log" &
FAKE=$!
trap 'kill $FAKE 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do grep -q listening "$OUT/fake.log" && break; sleep 0.1; done
URL="http://$(awk '/listening on/ {print $3}' "$OUT/fake.log")"
calls() { python3 -c "import urllib.request,sys; print(urllib.request.urlopen(sys.argv[1] + '/calls').read().decode())" "$URL"; }
EXT=(--sidecar-arg=--external-url="$URL" --sidecar-arg=--external-kind=llama-guard --sidecar-arg=--external-model=bench)

for run in $(seq 1 "$RUNS"); do
    printf '\n==> round %s of %s\n' "$run" "$RUNS" >&2
    "$OUT/threadwarden-bench" loadgen --server-bin "$OUT/threadwarden" --runs 1 \
        --duration "$DURATION" --warmup "$WARMUP" --scenarios pipelined,streams,latency \
        "${EXT[@]}" --sidecar-arg=--external-when=never --baseline-sidecar-arg=--state-backend=memory --json >"$OUT/never-$run.json"
    before=$(calls)
    "$OUT/threadwarden-bench" loadgen --server-bin "$OUT/threadwarden" --runs 1 \
        --duration "$DURATION" --warmup "$WARMUP" --scenarios pipelined \
        "${EXT[@]}" --sidecar-arg=--external-when=uncertain --baseline-sidecar-arg=--state-backend=memory --json >"$OUT/uncertain-$run.json"
    echo "$(( $(calls) - before ))" >"$OUT/uncertain-$run.calls"
    before=$(calls)
    "$OUT/threadwarden-bench" loadgen --server-bin "$OUT/threadwarden" --runs 1 \
        --duration "$DURATION" --warmup "$WARMUP" --scenarios pipelined \
        "${EXT[@]}" --sidecar-arg=--external-when=always --baseline-sidecar-arg=--state-backend=memory --json >"$OUT/always-$run.json"
    echo "$(( $(calls) - before ))" >"$OUT/always-$run.calls"
done

python3 - "$OUT" "$RUNS" "$DELAY" <<'PY' | tee "$OUT/external.md"
import json, sys
sys.path.insert(0, "scripts")
from loadgen_report import med, pair, runs_of, spread
out, runs, delay = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def load(kind):
    return [json.load(open(f"{out}/{kind}-{i}.json")) for i in range(1, runs + 1)]
print("| setting | scenario | tier on events/s | tier off events/s | ratio on/off | on p50 / p99 µs | off p50 / p99 µs |")
print("|---|---|---:|---:|---:|---:|---:|")
rows = [("configured, never called", "never", ["pipelined", "streams", "latency"]),
        ("uncertain (default)", "uncertain", ["pipelined"]),
        (f"always, fake answering in {delay}", "always", ["pipelined"])]
for label, kind, names in rows:
    rounds = load(kind)
    for name in names:
        rs = list(runs_of(rounds, name))
        on = [r["sidecar"]["events_per_sec"] for r in rs]
        off = [r["echo"]["events_per_sec"] for r in rs]
        ratio = [a / b for a, b in zip(on, off)]
        print(f"| {label} | {name} | {spread(on)} | {spread(off)} | {med(ratio):.3f} ({min(ratio):.3f}–{max(ratio):.3f}) | {pair(rs, 'sidecar')} | {pair(rs, 'echo')} |")
for kind in ["uncertain", "always"]:
    calls = [int(open(f"{out}/{kind}-{i}.calls").read()) for i in range(1, runs + 1)]
    print(f"\n`{kind}`: calls to the fake per round: {', '.join(map(str, calls))}")
ms = float(delay.rstrip("ms")) if delay.endswith("ms") else float(delay.rstrip("s")) * 1000
target = 32 / (ms / 1000)
always = med([r["sidecar"]["events_per_sec"] for r in runs_of(load("always"), "pipelined")])
print(f"\nOne stream with `always`: {always:,.0f} events/s against the target 32 / {delay} = {target:,.0f} ({always / target:.3f} of it).")
PY
