#!/usr/bin/env bash
# Soak test (not a CI test): builds release, starts the sidecar with a thread capacity below the
# number of distinct threads driven, drives a steady rate over Moderate streams for a while,
# samples RSS and /metrics every 10 s into a CSV, and prints a summary.
#
#   scripts/soak.sh                       # 10 minutes, 1,000,000 threads, 2,500 events/s,
#                                         # --max-threads 200000
#   DURATION=60 RATE=1000 scripts/soak.sh # shorter
#
# Knobs (environment): DURATION (s), RATE (events/s), THREADS (distinct thread ids),
# MAX_THREADS (the sidecar's --max-threads), STREAMS, OUT (directory for the CSV and logs).
# Exits non-zero if the driver saw errors or the sidecar died.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-600}
RATE=${RATE:-2500}
THREADS=${THREADS:-1000000}
MAX_THREADS=${MAX_THREADS:-200000}
STREAMS=${STREAMS:-8}
OUT=${OUT:-target/soak}
mkdir -p "$OUT"
CSV="$OUT/soak.csv"
LOG="$OUT/server.log"

echo "==> release build (sidecar and soak driver)"
cargo build --release --locked -p threadwarden --bin threadwarden
cargo build --release --locked -p threadwarden-bench --example soak

echo "==> sidecar: --max-threads $MAX_THREADS"
target/release/threadwarden serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --max-threads "$MAX_THREADS" --decision-log off >"$LOG" 2>&1 &
PID=$!
trap 'kill "$PID" 2>/dev/null || true' EXIT
ADDR=""; ADMIN=""
for _ in $(seq 1 300); do
    ADDR=$(grep -o '"listen":"[^"]*"' "$LOG" | head -1 | cut -d'"' -f4 || true)
    ADMIN=$(grep -o '"admin":"[^"]*"' "$LOG" | head -1 | cut -d'"' -f4 || true)
    [ -n "$ADDR" ] && [ -n "$ADMIN" ] && break
    kill -0 "$PID" 2>/dev/null || { cat "$LOG"; echo "sidecar exited"; exit 1; }
    sleep 0.1
done
[ -n "$ADDR" ] || { cat "$LOG"; echo "sidecar did not start"; exit 1; }
echo "    pid $PID, gRPC $ADDR, admin $ADMIN"

echo "==> driving $RATE events/s over $THREADS threads for ${DURATION}s ($STREAMS streams)"
target/release/examples/soak --addr "$ADDR" --admin "$ADMIN" --pid "$PID" \
    --threads "$THREADS" --rate "$RATE" --duration "$DURATION" --streams "$STREAMS" \
    --sample 10 --csv "$CSV"

kill -0 "$PID" 2>/dev/null || { echo "the sidecar died"; exit 1; }

echo "==> summary ($CSV)"
awk -F, -v cap="$MAX_THREADS" 'NR == 2 { min = $2; max = $2 }
    NR > 1 {
        if ($2 < min) min = $2; if ($2 > max) max = $2;
        if ($3 > tmax) tmax = $3;
        last = $2; t = $1; ev = $4; sent = $6; ok = $7; err = $8; ends = $9
        if ($10 > lat) lat = $10
    }
    END {
        printf "duration %d s; sent %d events (%.0f/s), %d verdicts, %d errors, %d ENDs\n", t, sent, sent / (t ? t : 1), ok, err, ends
        printf "RSS KiB: min %d, max %d, last %d\n", min, max, last
        printf "threads held: max %d (capacity %d); evictions %d\n", tmax, cap, ev
        printf "worst sampled verdict latency %.1f ms\n", lat
        if (err > 0) exit 1
    }' "$CSV"
